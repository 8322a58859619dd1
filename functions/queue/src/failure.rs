//! A run whose execution failed for good (an error that cannot heal, or transient retries
//! exhausted; in AWS also a timed-out or aborted execution) becomes `failed`: an exception ticket
//! names the stage and the error, a hold that was not captured is released (nothing is charged
//! for undelivered work), the ledger records both, and the agent gets a signed
//! `tokenops.run.failed` callback. The attestation is not issued. `POST /runs/{id}/redrive`
//! resumes the run from the stage that failed.
//!
//! Called by the queue function when the Express execution it ran synchronously ended FAILED or
//! TIMED_OUT (in AWS), and by the local orchestrator; either may call it twice for one failure,
//! and the relay finishes what a crash cut short (the `FAILING` index), so every step is
//! idempotent.

use tokenops::api::{load_run, object_item};
use tokenops::callback::{agent_secret, deliver, failure_record};
use tokenops::config::Ctx;
use tokenops::error::{StoreError, TaskError};
use tokenops::ids::{now_rfc3339, parse_id, run_object_id};
pub use tokenops::model::FailedExecution;
use tokenops::model::{CallbackFailure, CallbackRecord, ExceptionTicket, RunContract, RunFailure};
use tokenops::money;
use tokenops::ports::CallbackSender;
use tokenops::proof::jcs;
use tokenops::run_state::{RunState, Transition};
use tokenops::store::{Item, Key, Store, Write};

#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The run is `failed`, its ledger and callback done.
    Failed,
    /// The run was not in a state an execution fails from (already failed and finished,
    /// delivered, cancelled…): nothing to do.
    Ignored(RunState),
}

fn failing_key(execution: &str) -> Key {
    Key::new("FAILING", execution)
}

/// The outbox entry that says "this failure is not fully handled yet" (the relay re-runs
/// [`handle`] for entries older than its bound). The local orchestrator writes it with the
/// execution's FAILED checkpoint.
pub fn failing_write(f: &FailedExecution) -> Write {
    let now_ms = (tokenops::ids::now().unix_timestamp_nanos() / 1_000_000) as i64;
    Write::put(
        Item::new(
            failing_key(&f.execution),
            "failing_execution",
            None,
            serde_json::to_value(f).unwrap_or_default(),
        )
        .num("queued_at_ms", now_ms),
    )
}

/// The stage a run in `state` was waiting on: the one whose task failed.
pub fn stage_after(state: RunState, ledgered: bool) -> &'static str {
    match state {
        RunState::Queued => "queue",
        RunState::Dispatched | RunState::Replaying => "tokenops_execution",
        RunState::Reviewed => "result_contract",
        RunState::ResultContracted => "settlement_receipt",
        RunState::SettlementReceipted => "usage_receipt",
        RunState::UsageCaptured => "callback",
        RunState::CallbackDelivered | RunState::CallbackFailed if !ledgered => "ledger",
        _ => "attestation",
    }
}

pub fn run_of(execution: &str) -> &str {
    execution.split("-replay-").next().unwrap_or(execution)
}

pub async fn handle<S: Store, C: CallbackSender>(
    ctx: &Ctx<S>,
    sender: &C,
    f: &FailedExecution,
) -> Result<Outcome, TaskError> {
    let run_id = parse_id("run", run_of(&f.execution), "execution")
        .map_err(|_| TaskError::BadInput(format!("execution {} names no run", f.execution)))?;
    for _ in 0..5 {
        let rec = tokenops::stage::load(&ctx.store, &run_id).await?;
        let p = &rec.payload;
        match p.state.check(RunState::Failed) {
            Transition::AlreadyDone => break,
            Transition::Refused => {
                tracing::info!(run_id, state = p.state.as_str(), execution = %f.execution, "execution failed but the run is not running; nothing to do");
                clear(ctx, f).await?;
                return Ok(Outcome::Ignored(p.state));
            }
            Transition::Go => {}
        }
        let contract: RunContract = ctx
            .store
            .get(&Key::object(&run_object_id("rc", &run_id)))
            .await?
            .ok_or_else(|| TaskError::Internal(format!("run {run_id} has no contract")))?
            .decode()?;
        let n = p.redrives + 1;
        let stage = stage_after(p.state, p.first_link("ledger").is_some());
        let exception_id = format!("{}_f{n}", run_object_id("exc", &run_id));
        let held = ctx
            .store
            .get(&money::hold_key(&run_id))
            .await?
            .is_some_and(|h| h.get_attr("status") == Some("held"));
        let mut writes = Vec::new();
        if held {
            let (_, w) = money::release_failed(
                &contract.credit_entitlement_id,
                &contract.agent_id,
                &run_id,
                n,
                contract.credits_held,
            );
            writes.extend(w);
        }
        let ticket = ExceptionTicket {
            object_type: "agent_exception_ticket".into(),
            requested_tool: contract.requested_tool.clone(),
            exception_type: "stage_failure".into(),
            status: "waiting_on_redrive".into(),
            missing_items: vec![],
            safe_to_replay: true,
            exception_id: exception_id.clone(),
            run_id: run_id.clone(),
            evidence_score: 0,
            supply_evidence_url: String::new(),
            created_at: now_rfc3339(),
            failed_stage: Some(stage.into()),
            error: Some(format!("{}: {}", f.error, short(&f.cause))),
            redrive_url: Some(ctx.config.url(&format!("/runs/{run_id}/redrive"))),
        };
        let mut payload = p.clone();
        payload.failure = Some(RunFailure {
            stage: stage.into(),
            error: f.error.clone(),
            cause: short(&f.cause),
            failed_from: p.state,
            execution: f.execution.clone(),
            exception_id: exception_id.clone(),
            hold_released: held,
            failed_at: now_rfc3339(),
            ledgered: false,
            callback_status: "pending".into(),
        });
        payload.state = RunState::Failed;
        payload.link(
            "exception_recovery",
            &exception_id,
            "agent_exception_ticket",
            ctx.config.url(&format!("/exceptions/{exception_id}")),
            jcs::digest(&ticket).ok(),
        );
        writes.push(Write::put(object_item(
            &exception_id,
            "agent_exception_ticket",
            &contract.agent_id,
            Some(&run_id),
            &ticket,
        )?));
        writes.push(failing_write(f));
        writes.push(rec.save(payload)?);
        match ctx.store.transact(writes).await {
            Ok(()) => {
                tracing::warn!(run_id, stage, error = %f.error, hold_released = held, "run failed; hold released, exception ticket open");
                break;
            }
            Err(StoreError::ConditionFailed) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    finish(ctx, sender, f, &run_id).await?;
    Ok(Outcome::Failed)
}

/// The failure's ledger entries and the `run.failed` callback, each once; then the outbox entry
/// goes.
async fn finish<S: Store, C: CallbackSender>(
    ctx: &Ctx<S>,
    sender: &C,
    f: &FailedExecution,
    run_id: &str,
) -> Result<(), TaskError> {
    // Ledger: the ticket and the release, appended once (the page id names this failure).
    let mut appended = None;
    for _ in 0..5 {
        let rec = tokenops::stage::load(&ctx.store, run_id).await?;
        let Some(failure) = rec.payload.failure.clone() else {
            break;
        };
        if rec.payload.state != RunState::Failed || failure.ledgered {
            break;
        }
        let agent = rec.payload.agent_id.clone();
        let ticket_digest = rec
            .payload
            .objects
            .get("exception_recovery")
            .and_then(|l| l.iter().find(|l| l.id == failure.exception_id))
            .and_then(|l| l.sha256.clone())
            .unwrap_or_default();
        let n = rec.payload.redrives + 1;
        let mut entries = vec![ledger::NewEntry {
            entry_type: "run_failed".into(),
            object_id: failure.exception_id.clone(),
            object_digest: ticket_digest,
            credits: None,
        }];
        if failure.hold_released {
            entries.push(ledger::NewEntry {
                entry_type: "hold_release".into(),
                object_id: money::transfer_id("release", &format!("{run_id}_f{n}")),
                object_digest: String::new(),
                credits: Some(0),
            });
        }
        let page = ledger::Page {
            page: format!("{run_id}_f{n}"),
            run_id: run_id.to_string(),
            entries,
        };
        let mark = |rec: &tokenops::api::RunRecord| {
            let mut payload = rec.payload.clone();
            if let Some(fl) = payload.failure.as_mut() {
                fl.ledgered = true;
            }
            rec.save(payload)
        };
        let a = match appended.take() {
            Some(a) => a,
            None => ledger::append(&ctx.store, &agent, &page, |_| Ok(vec![mark(&rec)?])).await?,
        };
        if a.with_applied {
            break;
        }
        match ctx.store.transact(vec![mark(&rec)?]).await {
            Ok(()) => break,
            // The run moved on meanwhile: read it again and mark the same append.
            Err(StoreError::ConditionFailed) => appended = Some(a),
            Err(e) => return Err(e.into()),
        }
    }
    // The signed `tokenops.run.failed` callback (its own record, written before each attempt).
    let Some(rec) = load_run(&ctx.store, run_id).await? else {
        return Ok(());
    };
    if let Some(failure) = rec.payload.failure.clone() {
        if rec.payload.state == RunState::Failed && failure.callback_status == "pending" {
            let agent = rec.payload.agent_id.clone();
            let contract: RunContract = ctx
                .store
                .get(&Key::object(&run_object_id("rc", run_id)))
                .await?
                .ok_or_else(|| TaskError::Internal(format!("run {run_id} has no contract")))?
                .decode()?;
            let n = rec.payload.redrives + 1;
            let fresh = failure_record(
                &rec.payload,
                &contract.callback_url,
                CallbackFailure {
                    stage: failure.stage.clone(),
                    error: failure.error.clone(),
                    exception_url: ctx
                        .config
                        .url(&format!("/exceptions/{}", failure.exception_id)),
                    hold_released: failure.hold_released,
                    redrive_url: ctx.config.url(&format!("/runs/{run_id}/redrive")),
                },
                n,
            )?;
            let mut record: CallbackRecord =
                match ctx.store.get(&Key::object(&fresh.callback_id)).await? {
                    Some(i) => i.decode()?,
                    None => fresh,
                };
            let secret = agent_secret(&ctx.store, &agent).await?;
            deliver(ctx, sender, &mut record, &secret, &agent).await?;
            mark_notified(ctx, run_id, &record).await?;
        }
    }
    clear(ctx, f).await
}

async fn mark_notified<S: Store>(
    ctx: &Ctx<S>,
    run_id: &str,
    record: &CallbackRecord,
) -> Result<(), TaskError> {
    for _ in 0..5 {
        let rec = tokenops::stage::load(&ctx.store, run_id).await?;
        let mut payload = rec.payload.clone();
        let Some(fl) = payload.failure.as_mut() else {
            return Ok(());
        };
        fl.callback_status = record.status.clone();
        payload.link(
            "failure_callback",
            &record.callback_id,
            "callback_delivery",
            ctx.config.url(&format!("/runs/{run_id}")),
            jcs::digest(&record.payload).ok(),
        );
        match ctx.store.transact(vec![rec.save(payload)?]).await {
            Ok(()) => return Ok(()),
            Err(StoreError::ConditionFailed) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(TaskError::StoreUnavailable(format!(
        "run {run_id}: too much contention"
    )))
}

async fn clear<S: Store>(ctx: &Ctx<S>, f: &FailedExecution) -> Result<(), TaskError> {
    ctx.store
        .transact(vec![Write::Delete {
            key: failing_key(&f.execution),
            conds: vec![],
        }])
        .await
        .map_err(TaskError::from)
}

/// Causes can be long (stack-like SDK text): keep what a person reads, never more than 300 chars.
fn short(cause: &str) -> String {
    cause.chars().take(300).collect()
}
