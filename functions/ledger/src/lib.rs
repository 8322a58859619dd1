//! Stage 13 — ledger: the run's objects are appended to the agent's hash-chained ledger (each entry
//! carries the previous entry's hash). The head advances under a condition, so concurrent runs of
//! one agent serialize cleanly. Also `GET /ledger` (the chain, exportable) and `GET /ledger/verify`.

use tokenops::api::serve;
use tokenops::config::Ctx;
use tokenops::error::{ApiError, StoreError, TaskError};
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::ids::now_rfc3339;
use tokenops::model::{LedgerView, TaskOutput};
use tokenops::proof::ledger::{link, verify_chain, EntryDraft, LedgerEntry};
use tokenops::run_state::RunState;
use tokenops::stage::{load, task_input};
use tokenops::store::{Cond, Item, Key, Store, Write};

pub const STAGE: &str = "ledger";

/// The run objects that enter the ledger, in path order.
const LEDGERED: &[&str] = &[
    "run_contract",
    "queue",
    "tokenops_execution",
    "result_contract",
    "settlement_receipt",
    "usage_receipt",
    "callback",
];

fn head_key(agent: &str) -> Key {
    Key::new(format!("LEDGER#{agent}"), "HEAD")
}

pub async fn entries<S: Store>(store: &S, agent: &str) -> Result<Vec<LedgerEntry>, StoreError> {
    store
        .query(&format!("LEDGER#{agent}"), "E#", None)
        .await?
        .iter()
        .map(|i| i.decode())
        .collect()
}

pub async fn handle<S: Store>(ctx: &Ctx<S>, req: ApiRequest) -> ApiResponse {
    serve(ctx, req, |call| async move {
        let agent = call.caller.agent()?.to_string();
        match call.req.operation {
            // `?run_id=` filters to one of the agent's runs; another agent's run (or none) is a
            // 404, as every foreign id is — never an empty 200 that confirms nothing.
            Op::GetLedger => {
                let run = call.req.query.get("run_id");
                if let Some(r) = run {
                    let r = tokenops::ids::parse_id("run", r, "run_id")?;
                    match ctx.store.get(&Key::run(&r)).await? {
                        Some(item) if item.owner.as_deref() == Some(agent.as_str()) => {}
                        _ => return Err(ApiError::not_found("run_id", &r)),
                    }
                }
                let all = entries(&ctx.store, &agent).await?;
                let head = all.last().map(|e| e.entry_hash.clone());
                let entries: Vec<LedgerEntry> = match run {
                    Some(r) => all.into_iter().filter(|e| &e.run_id == r).collect(),
                    None => all,
                };
                Ok(ApiResponse::json(
                    200,
                    &LedgerView {
                        chain_id: agent,
                        head_hash: head,
                        entries,
                    },
                ))
            }
            Op::VerifyLedger => Ok(ApiResponse::json(
                200,
                &verify_chain(&entries(&ctx.store, &agent).await?),
            )),
            other => Err(ApiError::internal(format!("ledger does not serve {other}"))),
        }
    })
    .await
}

pub async fn run_task<S: Store>(
    ctx: &Ctx<S>,
    input: serde_json::Value,
) -> Result<TaskOutput, TaskError> {
    let run_id = task_input(&input)?;
    for _ in 0..20 {
        let rec = load(&ctx.store, &run_id).await?;
        let p = &rec.payload;
        if let Some(l) = p.first_link(STAGE) {
            return Ok(TaskOutput {
                run_id,
                stage: STAGE.into(),
                object_id: l.id.clone(),
                state: p.state,
                evidence_status: None,
            });
        }
        if !matches!(
            p.state,
            RunState::CallbackDelivered | RunState::CallbackFailed
        ) {
            return Err(TaskError::InvalidTransition {
                run_id,
                state: p.state.as_str().into(),
                stage: STAGE,
            });
        }
        let agent = p.agent_id.clone();
        let entries: Vec<NewEntry> = LEDGERED
            .iter()
            .filter_map(|stage| {
                p.first_link(stage).map(|l| NewEntry {
                    entry_type: stage.to_string(),
                    object_id: l.id.clone(),
                    object_digest: l.sha256.clone().unwrap_or_default(),
                    credits: (*stage == "usage_receipt").then_some(-p.credits),
                })
            })
            .collect();
        let appended = append_once(&ctx.store, &agent, &run_id, &entries, |last| {
            let mut payload = p.clone();
            payload.link(
                STAGE,
                &last.entry_id,
                "ledger_entry",
                ctx.config.url(&format!("/ledger?run_id={run_id}")),
                Some(last.entry_hash.clone()),
            );
            Ok(vec![rec.save(payload)?])
        })
        .await;
        match appended {
            Ok(last) => {
                tracing::info!(
                    run_id,
                    entries = entries.len(),
                    head_seq = last.seq,
                    "ledger appended"
                );
                return Ok(TaskOutput {
                    run_id,
                    stage: STAGE.into(),
                    object_id: last.entry_id,
                    state: rec.payload.state,
                    evidence_status: None,
                });
            }
            // Another run of this agent advanced the head (or this run was ledgered): re-read.
            Err(StoreError::ConditionFailed) => {
                tokio::time::sleep(std::time::Duration::from_millis(rand_jitter())).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(TaskError::StoreUnavailable("ledger head contention".into()))
}

/// One entry to append: what it records, the object's id and digest, and credits moved (if any).
pub struct NewEntry {
    pub entry_type: String,
    pub object_id: String,
    pub object_digest: String,
    pub credits: Option<i64>,
}

/// Appends `entries` for `run_id` to `agent`'s chain in one transaction with the writes `with`
/// derives from the new head, under the head's condition. `ConditionFailed` means another append
/// won: the caller re-reads and tries again.
pub async fn append_once<S: Store>(
    store: &S,
    agent: &str,
    run_id: &str,
    entries: &[NewEntry],
    with: impl FnOnce(&LedgerEntry) -> Result<Vec<Write>, StoreError>,
) -> Result<LedgerEntry, StoreError> {
    let head = store.get(&head_key(agent)).await?;
    let mut prev: Option<LedgerEntry> = head.as_ref().map(|h| h.decode()).transpose()?;
    let mut writes = Vec::new();
    for n in entries {
        let seq = prev.as_ref().map(|e| e.seq + 1).unwrap_or(1);
        let draft = EntryDraft {
            entry_id: format!("ledger_{}_{seq}", tokenops::ids::suffix(agent)),
            chain_id: agent.to_string(),
            run_id: run_id.to_string(),
            entry_type: n.entry_type.clone(),
            object_id: n.object_id.clone(),
            object_digest: n.object_digest.clone(),
            credits: n.credits,
            recorded_at: now_rfc3339(),
        };
        let e = link(prev.as_ref(), draft).map_err(|e| StoreError::Corrupt {
            key: format!("ledger of {agent}"),
            reason: e.to_string(),
        })?;
        writes.push(Write::create(Item::of(
            Key::new(format!("LEDGER#{agent}"), format!("E#{:020}", e.seq)),
            "ledger_entry",
            Some(agent),
            &e,
        )?));
        prev = Some(e);
    }
    let Some(last) = prev else {
        return Err(StoreError::Corrupt {
            key: run_id.to_string(),
            reason: "nothing to ledger".into(),
        });
    };
    let head_cond = match &head {
        Some(h) => vec![Cond::NumEq("seq".into(), h.get_num("seq"))],
        None => vec![Cond::NotExists],
    };
    writes.push(Write::put_if(
        Item::of(head_key(agent), "ledger_head", Some(agent), &last)?.num("seq", last.seq as i64),
        head_cond,
    ));
    writes.extend(with(&last)?);
    store.transact(writes).await?;
    Ok(last)
}

pub fn rand_jitter() -> u64 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        % 20) as u64
        + 1
}
