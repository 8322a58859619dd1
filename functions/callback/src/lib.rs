//! Stage 12 — callback: the signed callback (Standard Webhooks) POSTed to the agent's callback URL
//! with retries and backoff, every attempt recorded. A callback that never succeeds leaves the run
//! `callback_failed` (visible, `next_action: redeliver_callback`); `POST /runs/{id}/callback/redeliver`
//! sends it again on request.

use tokenops::api::{owned_object, serve, Call};
use tokenops::callback::{agent_secret, callback_id, deliver, record_for, record_item};
use tokenops::config::Ctx;
use tokenops::error::{ApiError, StoreError, TaskError};
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::model::{CallbackRecord, RunContract, TaskOutput};
use tokenops::ports::CallbackSender;
use tokenops::proof::jcs;
use tokenops::run_state::{RunState, Transition};
use tokenops::stage::{advance_from, load, run_contract, task_input, Step};
use tokenops::store::Store;

pub const STAGE: &str = "callback";

pub async fn handle<S: Store, C: CallbackSender>(
    ctx: &Ctx<S>,
    sender: &C,
    req: ApiRequest,
) -> ApiResponse {
    serve(ctx, req, |call| async move {
        match call.req.operation {
            Op::RedeliverCallback => redeliver(ctx, sender, call).await,
            other => Err(ApiError::internal(format!(
                "callback does not serve {other}"
            ))),
        }
    })
    .await
}

pub async fn run_task<S: Store, C: CallbackSender>(
    ctx: &Ctx<S>,
    sender: &C,
    input: serde_json::Value,
) -> Result<TaskOutput, TaskError> {
    let run_id = task_input(&input)?;
    let rec = load(&ctx.store, &run_id).await?;
    match rec.payload.state.check(RunState::CallbackDelivered) {
        _ if rec.payload.state == RunState::CallbackFailed => {
            // Already tried and recorded; only a redelivery request sends again.
            return Err(TaskError::CallbackDeliveryFailed {
                attempts: 0,
                last_error: "run is callback_failed; redeliver on request".into(),
            });
        }
        Transition::Go => {}
        // Delivered already (or refused): `advance` answers without an effect.
        _ => {
            return advance_from(&ctx.store, rec, STAGE, RunState::CallbackDelivered, no_step).await
        }
    }
    // Deliver first, outside the run's optimistic lock: a lost lock must not mean a second POST.
    // The callback record is written before and after every attempt (see `deliver`).
    let agent = rec.payload.agent_id.clone();
    let contract: RunContract = run_contract(&ctx.store, &input, &rec).await?;
    let mut record = record_for(ctx, &rec.payload, &contract.callback_url).await?;
    let secret = agent_secret(&ctx.store, &agent).await?;
    let delivered = deliver(ctx, sender, &mut record, &secret, &agent).await?;
    let to = if delivered {
        RunState::CallbackDelivered
    } else {
        RunState::CallbackFailed
    };
    let record = &record;
    // The run as read before delivering: its version still guards the write.
    let out = advance_from(&ctx.store, rec, STAGE, to, |rec| async move {
        let mut payload = rec.payload.clone();
        payload.state = to;
        payload.link(
            STAGE,
            &record.callback_id,
            "callback_delivery",
            ctx.config.url(&format!("/runs/{}", payload.run_id)),
            jcs::digest(&record.payload).ok(),
        );
        Ok(Step {
            object_id: record.callback_id.clone(),
            payload,
            writes: vec![],
            evidence_status: None,
        })
    })
    .await?;
    if out.state == RunState::CallbackFailed {
        let attempts = ctx.config.callback_retry.attempts;
        return Err(TaskError::CallbackDeliveryFailed {
            attempts,
            last_error: "every attempt failed; see the callback record".into(),
        });
    }
    Ok(out)
}

/// `advance` for a run already past the callback: never called, the transition is `AlreadyDone`
/// or refused before it would be.
async fn no_step(rec: tokenops::api::RunRecord) -> Result<Step, TaskError> {
    Err(TaskError::InvalidTransition {
        run_id: rec.payload.run_id.clone(),
        state: rec.payload.state.as_str().into(),
        stage: STAGE,
    })
}

async fn redeliver<S: Store, C: CallbackSender>(
    ctx: &Ctx<S>,
    sender: &C,
    call: Call,
) -> Result<ApiResponse, ApiError> {
    let agent = call.caller.agent()?.to_string();
    let run_id = tokenops::ids::parse_id("run", call.req.param("run_id"), "run_id")?;
    let rec = match tokenops::api::load_run(&ctx.store, &run_id).await? {
        Some(r) if r.payload.agent_id == agent => r,
        _ => return Err(ApiError::not_found("run_id", &run_id)),
    };
    if !matches!(
        rec.payload.state,
        RunState::CallbackDelivered | RunState::CallbackFailed
    ) {
        return Err(ApiError::conflict(
            "invalid-transition",
            "state",
            format!(
                "the callback has not been sent yet (run is {})",
                rec.payload.state.as_str()
            ),
        ));
    }
    let mut record: CallbackRecord =
        owned_object(&ctx.store, &callback_id(&run_id), &agent, "run_id")
            .await?
            .decode()?;
    let secret = agent_secret(&ctx.store, &agent).await?;
    // Asked for explicitly: send again even if an earlier attempt was delivered.
    record.status = "redelivery_requested".into();
    let delivered = deliver(ctx, sender, &mut record, &secret, &agent).await?;
    let mut writes = vec![tokenops::store::Write::put(record_item(&record, &agent)?)];
    if delivered && rec.payload.state == RunState::CallbackFailed {
        let mut payload = rec.payload.clone();
        payload.state = RunState::CallbackDelivered;
        writes.push(rec.save(payload)?);
    }
    match ctx.store.transact(writes).await {
        Ok(()) => Ok(ApiResponse::json(
            if delivered { 200 } else { 502 },
            &record,
        )),
        Err(StoreError::ConditionFailed) => Err(ApiError::conflict(
            "concurrent-update",
            "state",
            "the run changed concurrently; retry",
        )),
        Err(e) => Err(e.into()),
    }
}
