//! Stage 7 — queue. Consumes run messages (SQS in AWS, the table-backed queue locally), marks the
//! run `dispatched` with a queue-state object, and starts the orchestrated path with an execution
//! **named by the run** (replays: `<run>-replay-<n>`). In AWS the path is an Express workflow
//! started synchronously: the consumer waits for its end and hands a failed one to the failure
//! handler; a redelivered message may run the path again, which its idempotent stages make a
//! no-op. Locally the engine refuses a second execution of a name and runs the failure handler
//! itself. Also `GET /queue`, the monitor with the consumer's heartbeat.

use tokenops::api::{object_item, serve};
use tokenops::config::Ctx;
use tokenops::error::{ApiError, TaskError};
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::ids::{now_rfc3339, run_object_id};
use tokenops::model::FailedExecution;
use tokenops::model::{
    QueueHeartbeat, QueueMonitor, QueueService, QueueState, RunMessage, RunsWaiting,
};
use tokenops::ports::{CallbackSender, Delivery, Ended, Orchestrator, Redriven, RunQueue, Started};
use tokenops::proof::jcs;
use tokenops::run_state::{RunState, Transition};
use tokenops::stage::{advance_from, load, Step};
use tokenops::store::{Item, Key, Store, Write};

pub mod failure;
pub mod redrive;
pub mod relay;

pub const STAGE: &str = "queue";

fn heartbeat_key() -> Key {
    Key::new("QUEUE#heartbeat", "HEARTBEAT")
}

/// `GET /queue`, scoped to the caller: an agent sees
/// - `runs`: its **own** runs waiting for dispatch (`pending`, `oldest_age_seconds`), from the
///   pending index filtered by run owner;
/// - `queue`: the queue's service figures that carry no other agent's traffic — its name,
///   redrive policy (`max_receives`, `visibility_timeout_seconds`) and `dead_letter_depth`
///   (poison messages, a health signal);
/// - `consumer_heartbeat`: when the consumer last ran (global service health).
///
/// The queue-wide `depth`, `in_flight` and oldest age measure every agent's traffic and are not
/// shown to agents (they remain in CloudWatch / `RunQueue::stats` for operators).
pub async fn handle<S: Store, Q: RunQueue>(
    ctx: &Ctx<S>,
    queue: &Q,
    req: ApiRequest,
) -> ApiResponse {
    serve(ctx, req, |call| async move {
        match call.req.operation {
            Op::QueueMonitor => {
                let agent = call.caller.agent()?;
                let stats = queue.stats().await?;
                let (pending, oldest) =
                    tokenops::queue::pending_for_agent(&ctx.store, agent).await?;
                let consumer_heartbeat = ctx
                    .store
                    .get(&heartbeat_key())
                    .await?
                    .map(|i| i.decode())
                    .transpose()?;
                Ok(ApiResponse::json(
                    200,
                    &QueueMonitor {
                        runs: RunsWaiting {
                            pending,
                            oldest_age_seconds: oldest,
                        },
                        queue: QueueService {
                            queue: stats.queue,
                            dead_letter_depth: stats.dead_letter_depth,
                            max_receives: stats.max_receives,
                            visibility_timeout_seconds: stats.visibility_timeout_seconds,
                        },
                        consumer_heartbeat,
                    },
                ))
            }
            Op::RedriveRun => {
                let agent = call.caller.agent()?;
                let run_id = tokenops::ids::parse_id("run", call.req.param("run_id"), "run_id")?;
                redrive::redrive_run(ctx, queue, &run_id, agent, call.idem.as_ref()).await
            }
            other => Err(ApiError::internal(format!("queue does not serve {other}"))),
        }
    })
    .await
}

/// Handles one message. `Ok` means the message may be deleted (done, or nothing to do);
/// `Err` leaves it for redelivery (and, after enough receives, the dead-letter queue).
pub async fn dispatch<S: Store, O: Orchestrator, C: CallbackSender>(
    ctx: &Ctx<S>,
    orch: &O,
    sender: &C,
    d: &Delivery,
) -> Result<String, TaskError> {
    let msg: &RunMessage = &d.body;
    let run_id = tokenops::ids::parse_id("run", &msg.run_id, "run_id").map_err(|_| {
        TaskError::BadInput(format!("message {} has no valid run_id", d.message_id))
    })?;
    let name = msg.execution_name();
    if msg.redrive > 0 {
        return redrive(ctx, orch, sender, msg, &run_id, name).await;
    }
    if msg.replay == 0 {
        let rec = load(&ctx.store, &run_id).await?;
        match rec.payload.state.check(RunState::Dispatched) {
            Transition::Refused => {
                tracing::info!(
                    run_id,
                    state = rec.payload.state.as_str(),
                    "run not dispatchable; message dropped"
                );
                clear_pending(ctx, msg).await?;
                return Ok("dropped".into());
            }
            Transition::Go => {
                let exec_name = name.clone();
                advance_from(&ctx.store, rec, STAGE, RunState::Dispatched, |rec| {
                    let exec_name = exec_name.clone();
                    async move {
                        let qs = QueueState {
                            object_type: "queue_state".into(),
                            queue_state_id: run_object_id("qs", &rec.payload.run_id),
                            run_id: rec.payload.run_id.clone(),
                            status: "dispatched".into(),
                            message_id: d.message_id.clone(),
                            receive_count: d.receive_count,
                            execution_name: exec_name,
                            queued_at: rec.payload.created_at.clone(),
                            dispatched_at: now_rfc3339(),
                        };
                        let mut payload = rec.payload.clone();
                        payload.state = RunState::Dispatched;
                        payload.link(
                            STAGE,
                            &qs.queue_state_id,
                            "queue_state",
                            ctx.config.url(&format!("/runs/{}", qs.run_id)),
                            jcs::digest(&qs).ok(),
                        );
                        let writes = vec![
                            Write::create(object_item(
                                &qs.queue_state_id,
                                "queue_state",
                                &payload.agent_id,
                                Some(&qs.run_id),
                                &qs,
                            )?),
                            tokenops::queue::dispatched_write(msg),
                        ];
                        Ok(Step {
                            object_id: qs.queue_state_id,
                            payload,
                            writes,
                            evidence_status: None,
                        })
                    }
                })
                .await?;
            }
            // Already dispatched: the earlier delivery may have died before starting; start is idempotent.
            Transition::AlreadyDone => {}
        }
    } else {
        let rec = load(&ctx.store, &run_id).await?;
        if rec.payload.state != RunState::Replaying {
            clear_pending(ctx, msg).await?;
            return Ok("dropped".into());
        }
    }
    let started = orch
        .start(
            &name,
            tokenops::stage::execution_input(&ctx.store, &run_id).await,
        )
        .await?;
    if msg.replay > 0 {
        clear_pending(ctx, msg).await?;
    }
    on_started(ctx, sender, &name, started).await?;
    Ok(name)
}

/// An execution that ended before `start` returned (Express) and failed goes to the failure
/// handler, recorded first in the `FAILING` outbox: if the handler does not finish (an outage),
/// the relay does, and the message is still done.
async fn on_started<S: Store, C: CallbackSender>(
    ctx: &Ctx<S>,
    sender: &C,
    name: &str,
    started: Started,
) -> Result<(), TaskError> {
    let Started::Ended(Ended::Failed { error, cause }) = started else {
        return Ok(());
    };
    let f = FailedExecution {
        execution: name.to_string(),
        error,
        cause,
    };
    tracing::warn!(execution = %f.execution, error = %f.error, "execution failed; failure handler");
    ctx.store.transact(vec![failure::failing_write(&f)]).await?;
    if let Err(e) = failure::handle(ctx, sender, &f).await {
        tracing::warn!(execution = %f.execution, error = %e, "failure handling interrupted; the relay finishes it");
    }
    Ok(())
}

/// A redrive message (written by `POST /runs/{id}/redrive` with the run put back in the state it
/// failed from): resume the failed execution. Stale messages (the run failed again, or went on)
/// are dropped; a run that failed before its execution existed gets it started.
async fn redrive<S: Store, O: Orchestrator, C: CallbackSender>(
    ctx: &Ctx<S>,
    orch: &O,
    sender: &C,
    msg: &RunMessage,
    run_id: &str,
    name: String,
) -> Result<String, TaskError> {
    let rec = load(&ctx.store, run_id).await?;
    if rec.payload.redrives != msg.redrive
        || matches!(rec.payload.state, RunState::Failed | RunState::Cancelled)
    {
        tracing::info!(
            run_id,
            state = rec.payload.state.as_str(),
            redrive = msg.redrive,
            "stale redrive message dropped"
        );
        clear_pending(ctx, msg).await?;
        return Ok("dropped".into());
    }
    match orch.redrive(&name).await? {
        Redriven::Yes => tracing::info!(run_id, execution = %name, "execution redriven"),
        Redriven::NotFailed => {
            tracing::info!(run_id, execution = %name, "execution not failed; redrive was a duplicate")
        }
        Redriven::NotFound | Redriven::StartAgain => {
            let started = orch
                .start(
                    &name,
                    tokenops::stage::execution_input(&ctx.store, run_id).await,
                )
                .await?;
            clear_pending(ctx, msg).await?;
            on_started(ctx, sender, &name, started).await?;
            return Ok(name);
        }
    }
    clear_pending(ctx, msg).await?;
    Ok(name)
}

async fn clear_pending<S: Store>(ctx: &Ctx<S>, msg: &RunMessage) -> Result<(), TaskError> {
    ctx.store
        .transact(vec![tokenops::queue::dispatched_write(msg)])
        .await
        .map_err(TaskError::from)
}

/// Handles a batch (SQS event records, or what the local queue delivered) and writes the consumer
/// heartbeat. Returns the message ids that failed: SQS redelivers them (partial batch response);
/// records that are not run messages arrive as `Err(message_id)` and fail too, so after
/// `maxReceiveCount` receives they land in the dead-letter queue. In AWS each message waits on its
/// whole execution, so the event source hands the function one message per invocation
/// (`BatchSize: 1`) and Lambda runs as many at once as there are messages; a local batch runs its
/// messages side by side for the same reason.
pub async fn consume<S: Store, O: Orchestrator, C: CallbackSender>(
    ctx: &Ctx<S>,
    orch: &O,
    sender: &C,
    batch: &[Result<Delivery, String>],
) -> Vec<String> {
    // The batch's messages run side by side, as separate Lambda invocations would: one slow
    // execution does not hold back the others (nor push the batch past the function's timeout).
    let mut failed = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    for d in batch {
        match d {
            Ok(d) => {
                let (ctx, orch, sender, d) = (ctx.clone(), orch.clone(), sender.clone(), d.clone());
                running.spawn(async move {
                    let r = dispatch(&ctx, &orch, &sender, &d).await;
                    (d, r)
                });
            }
            Err(id) => {
                tracing::warn!(message_id = %id, "not a run message; left for the dead-letter queue");
                failed.push(id.clone());
            }
        }
    }
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok((_, Ok(_))) => {}
            Ok((d, Err(e))) => {
                tracing::warn!(message_id = %d.message_id, receive_count = d.receive_count, error = %e, "dispatch failed; left for redelivery");
                failed.push(d.message_id.clone());
            }
            // A panicked dispatch names no message: fail the whole batch (redelivered, and
            // every stage is idempotent) rather than delete a message that did not finish.
            Err(e) => {
                tracing::error!(error = %e, "a dispatch panicked; the batch is left for redelivery");
                return batch
                    .iter()
                    .map(|d| match d {
                        Ok(d) => d.message_id.clone(),
                        Err(id) => id.clone(),
                    })
                    .collect();
            }
        }
    }
    let hb = QueueHeartbeat {
        at: now_rfc3339(),
        last_batch: batch.len() as u64,
        last_batch_failures: failed.len() as u64,
    };
    let written = match Item::of(heartbeat_key(), "heartbeat", None, &hb) {
        Ok(item) => ctx.store.transact(vec![Write::put(item)]).await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        tracing::warn!(error = %e, "heartbeat not written");
    }
    failed
}

/// The local consumer: [`consume`], then delete what succeeded (Lambda does this for SQS).
pub async fn process_batch<S: Store, Q: RunQueue, O: Orchestrator, C: CallbackSender>(
    ctx: &Ctx<S>,
    queue: &Q,
    orch: &O,
    sender: &C,
    batch: Vec<Delivery>,
) -> Vec<String> {
    let records: Vec<Result<Delivery, String>> = batch.into_iter().map(Ok).collect();
    let failed = consume(ctx, orch, sender, &records).await;
    for d in records.iter().flatten() {
        if failed.contains(&d.message_id) {
            continue;
        }
        if let Err(e) = queue.ack(d).await {
            tracing::warn!(message_id = %d.message_id, error = %e, "ack failed; the message will be redelivered");
        }
    }
    failed
}
