//! Redrive: a `failed` run resumes from the stage that failed (`POST /runs/{run_id}/redrive` by
//! the run's agent; `tokenops redrive RUN` by the local operator; in AWS an operator invokes the
//! queue function with `{"tokenops_redrive": "<run_id>"}`).
//!
//! In one transaction, with the idempotency record: a released hold is taken again (refused
//! with 409 `insufficient-credits` if the credits went elsewhere), the run goes back to the state
//! it failed from, the ticket is marked redriven, and a redrive message enters the pending
//! outbox. The queue stage then resumes the path: the local engine from the failed state; in AWS
//! a new Express execution (Express has no redrive), whose stages that already succeeded answer
//! their objects without a second effect.

use tokenops::api::{commit, load_run, Commit, Idem};
use tokenops::config::Ctx;
use tokenops::error::{ApiError, StoreError};
use tokenops::http::ApiResponse;
use tokenops::ids::run_object_id;
use tokenops::model::{ExceptionTicket, RunContract, RunMessage};
use tokenops::ports::RunQueue;
use tokenops::run_state::RunState;
use tokenops::store::{Key, Store, Write};

/// The local plane's operator (its key is in the data dir): may redrive any agent's run.
pub const OPERATOR: &str = "operator";

pub async fn redrive_run<S: Store, Q: RunQueue>(
    ctx: &Ctx<S>,
    queue: &Q,
    run_id: &str,
    caller: &str,
    idem: Option<&Idem>,
) -> Result<ApiResponse, ApiError> {
    // A lost optimistic lock (the failure handler still recording its callback) means: re-read.
    for _ in 0..5 {
        match try_redrive(ctx, queue, run_id, caller, idem).await? {
            Some(resp) => return Ok(resp),
            None => continue,
        }
    }
    Err(ApiError::conflict(
        "concurrent-update",
        "state",
        "the run changed concurrently; read it and retry",
    ))
}

/// One attempt; `None` when the run moved between the read and the write.
async fn try_redrive<S: Store, Q: RunQueue>(
    ctx: &Ctx<S>,
    queue: &Q,
    run_id: &str,
    caller: &str,
    idem: Option<&Idem>,
) -> Result<Option<ApiResponse>, ApiError> {
    let rec = match load_run(&ctx.store, run_id).await? {
        Some(r) if caller == OPERATOR || r.payload.agent_id == caller => r,
        _ => return Err(ApiError::not_found("run_id", run_id)),
    };
    let (Some(failure), RunState::Failed) = (rec.payload.failure.clone(), rec.payload.state) else {
        return Err(ApiError::conflict(
            "invalid-transition",
            "state",
            format!(
                "only a failed run can be redriven; this one is {}",
                rec.payload.state.as_str()
            ),
        ));
    };
    let contract: RunContract = ctx
        .store
        .get(&Key::object(&run_object_id("rc", run_id)))
        .await?
        .ok_or_else(|| ApiError::internal("the run has no contract"))?
        .decode()?;
    let n = rec.payload.redrives + 1;
    let mut writes = Vec::new();
    if failure.hold_released {
        let ent = ctx
            .store
            .get(&Key::object(&contract.credit_entitlement_id))
            .await?
            .ok_or_else(|| ApiError::internal("the run's entitlement is missing"))?;
        if ent.get_num("available") < contract.credits_held {
            return Err(ApiError::new(
                409,
                "insufficient-credits",
                "Insufficient credits",
                format!(
                    "credit entitlement {} has {} available credits; the run needs {} again",
                    contract.credit_entitlement_id,
                    ent.get_num("available"),
                    contract.credits_held
                ),
                Some("credit_entitlement_id"),
            ));
        }
        let (_, w) = tokenops::money::rehold(
            &contract.credit_entitlement_id,
            &contract.agent_id,
            run_id,
            n,
            contract.credits_held,
        );
        writes.extend(w);
    }
    if let Some(t) = ctx.store.get(&Key::object(&failure.exception_id)).await? {
        let mut ticket: ExceptionTicket = t.decode()?;
        ticket.status = "redriven".into();
        writes.push(Write::put(tokenops::api::object_item(
            &failure.exception_id,
            "agent_exception_ticket",
            &contract.agent_id,
            Some(run_id),
            &ticket,
        )?));
    }
    let mut payload = rec.payload.clone();
    payload.state = failure.failed_from;
    payload.redrives = n;
    payload.failure = None;
    payload.refresh_next_action();
    writes.push(rec.save(payload.clone())?);
    let msg = RunMessage {
        run_id: run_id.into(),
        replay: replay_of(&failure.execution),
        redrive: n,
    };
    writes.push(tokenops::queue::pending_write(&msg));
    let resp = match commit(&ctx.store, idem, Commit::new(202, &payload, writes)).await {
        Ok(r) => r,
        // The run moved, or the credits went between the read and the write: decide again.
        Err(StoreError::ConditionFailed) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if resp.header("idempotent-replayed").is_none() {
        // In the pending outbox already: a lost send is re-sent by the relay.
        if let Err(e) = queue.send(&msg).await {
            tracing::warn!(run_id, error = %e, "redrive stored but not enqueued; the relay re-sends it");
        }
        tracing::info!(run_id, redrive = n, from = failure.failed_from.as_str(), stage = %failure.stage, "run redriven");
    }
    Ok(Some(resp))
}

fn replay_of(execution: &str) -> u32 {
    execution
        .rsplit_once("-replay-")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}
