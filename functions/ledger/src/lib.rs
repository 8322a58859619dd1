//! Stage 13 — ledger: the run's objects are appended to the agent's hash-chained ledger (each entry
//! carries the previous entry's hash). Concurrent runs of one agent never race for the head: one
//! holds its lease and seals the others' pages with its own (`chain`). Also `GET /ledger` (the chain, exportable) and `GET /ledger/verify`.

mod chain;

pub use chain::{append, entries, Appended, NewEntry, Page};

use tokenops::api::{serve, RunRecord};
use tokenops::config::Ctx;
use tokenops::error::{ApiError, StoreError, TaskError};
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::model::{LedgerView, TaskOutput};
use tokenops::proof::ledger::{verify_chain, LedgerEntry};
use tokenops::run_state::RunState;
use tokenops::stage::{load, task_input};
use tokenops::store::{Key, Store, Write};

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
    let mut rec = load(&ctx.store, &run_id).await?;
    // Ledgered already, or not (or no longer) in a state the ledger stage follows.
    let done_or_refused = |rec: &RunRecord| -> Option<Result<TaskOutput, TaskError>> {
        let p = &rec.payload;
        if let Some(l) = p.first_link(STAGE) {
            return Some(Ok(output(&run_id, l.id.clone(), p.state)));
        }
        (!matches!(
            p.state,
            RunState::CallbackDelivered | RunState::CallbackFailed
        ))
        .then(|| {
            Err(TaskError::InvalidTransition {
                run_id: run_id.clone(),
                state: p.state.as_str().into(),
                stage: STAGE,
            })
        })
    };
    if let Some(r) = done_or_refused(&rec) {
        return r;
    }
    let p = &rec.payload;
    let page = Page {
        page: run_id.clone(),
        run_id: run_id.clone(),
        entries: LEDGERED
            .iter()
            .filter_map(|stage| {
                p.first_link(stage).map(|l| NewEntry {
                    entry_type: stage.to_string(),
                    object_id: l.id.clone(),
                    object_digest: l.sha256.clone().unwrap_or_default(),
                    credits: (*stage == "usage_receipt").then_some(-p.credits),
                })
            })
            .collect(),
    };
    let agent = p.agent_id.clone();
    let link_run = |rec: &RunRecord, last: &LedgerEntry| -> Result<Write, StoreError> {
        let mut payload = rec.payload.clone();
        payload.link(
            STAGE,
            &last.entry_id,
            "ledger_entry",
            ctx.config.url(&format!("/ledger?run_id={run_id}")),
            Some(last.entry_hash.clone()),
        );
        rec.save(payload)
    };
    let mut appended = None;
    for round in 0..5 {
        if round > 0 {
            if let Some(r) = done_or_refused(&rec) {
                return r;
            }
        }
        let a = match appended.take() {
            Some(a) => a,
            None => {
                append(&ctx.store, &agent, &page, |last| {
                    Ok(vec![link_run(&rec, last)?])
                })
                .await?
            }
        };
        // Sealed by another append's transaction (a group commit): link the run to it here.
        if !a.with_applied {
            match ctx.store.transact(vec![link_run(&rec, &a.last)?]).await {
                Ok(()) => {}
                // The run moved on meanwhile: read it again, link the same entry.
                Err(StoreError::ConditionFailed) => {
                    rec = load(&ctx.store, &run_id).await?;
                    appended = Some(a);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(
            run_id,
            entries = page.entries.len(),
            head_seq = a.last.seq,
            group_commit = !a.with_applied,
            "ledger appended"
        );
        return Ok(output(&run_id, a.last.entry_id, rec.payload.state));
    }
    Err(TaskError::StoreUnavailable(
        "the run kept changing while it was ledgered".into(),
    ))
}

fn output(run_id: &str, object_id: String, state: RunState) -> TaskOutput {
    TaskOutput {
        run_id: run_id.to_string(),
        stage: STAGE.into(),
        object_id,
        state,
        evidence_status: None,
    }
}
