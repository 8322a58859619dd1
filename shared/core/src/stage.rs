//! How every Step Functions task advances a run: load it, check the transition, write the stage's
//! object and the new run state in one conditional transaction. A redelivered task finds the run
//! already past its target and returns the existing object without a second effect.

use crate::api::{load_run, RunRecord};
use crate::error::{StoreError, TaskError};
use crate::model::{FullLoopPayload, TaskOutput};
use crate::run_state::{RunState, Transition};
use crate::store::{Store, Write};

/// What a stage produced: its object id, the run payload after it, and the writes (object, money…).
pub struct Step {
    pub object_id: String,
    pub payload: FullLoopPayload,
    pub writes: Vec<Write>,
    pub evidence_status: Option<String>,
}

pub async fn load<S: Store>(store: &S, run_id: &str) -> Result<RunRecord, TaskError> {
    load_run(store, run_id)
        .await?
        .ok_or_else(|| TaskError::RunNotFound(run_id.to_string()))
}

/// Runs `build` when the run may enter `to`; retries on a lost optimistic lock.
pub async fn advance<S, F, Fut>(
    store: &S,
    run_id: &str,
    stage: &'static str,
    to: RunState,
    build: F,
) -> Result<TaskOutput, TaskError>
where
    S: Store,
    F: Fn(RunRecord) -> Fut,
    Fut: std::future::Future<Output = Result<Step, TaskError>>,
{
    let rec = load(store, run_id).await?;
    advance_from(store, rec, stage, to, build).await
}

/// [`advance`] from a run the task has read already (to decide something first): the first
/// attempt uses it, since its version guards the write anyway; a lost lock reads it again.
pub async fn advance_from<S, F, Fut>(
    store: &S,
    read: RunRecord,
    stage: &'static str,
    to: RunState,
    build: F,
) -> Result<TaskOutput, TaskError>
where
    S: Store,
    F: Fn(RunRecord) -> Fut,
    Fut: std::future::Future<Output = Result<Step, TaskError>>,
{
    let run_id = &read.payload.run_id.clone();
    let mut first = Some(read);
    for _ in 0..5 {
        let rec = match first.take() {
            Some(rec) => rec,
            None => load(store, run_id).await?,
        };
        let state = rec.payload.state;
        match state.check(to) {
            Transition::AlreadyDone => {
                return Ok(TaskOutput {
                    run_id: run_id.into(),
                    stage: stage.into(),
                    object_id: rec.payload.first_id(stage).unwrap_or_default().to_string(),
                    state,
                    evidence_status: None,
                })
            }
            Transition::Refused => {
                return Err(TaskError::InvalidTransition {
                    run_id: run_id.into(),
                    state: state.as_str().into(),
                    stage,
                })
            }
            Transition::Go => {}
        }
        let save_from = RunRecord {
            payload: rec.payload.clone(),
            version: rec.version,
            item: rec.item.clone(),
        };
        let step = build(rec).await?;
        let new_state = step.payload.state;
        let mut writes = step.writes;
        writes.push(save_from.save(step.payload)?);
        match store.transact(writes).await {
            Ok(()) => {
                tracing::info!(run_id, stage, state = new_state.as_str(), "stage done");
                return Ok(TaskOutput {
                    run_id: run_id.into(),
                    stage: stage.into(),
                    object_id: step.object_id,
                    state: new_state,
                    evidence_status: step.evidence_status,
                });
            }
            // Someone else moved the run (a concurrent delivery): re-read and decide again.
            Err(StoreError::ConditionFailed) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(TaskError::StoreUnavailable(format!(
        "run {run_id}: too much contention"
    )))
}

/// Parses a task's input (`{"run_id": ...}` plus anything the state machine carries).
pub fn task_input(v: &serde_json::Value) -> Result<String, TaskError> {
    let id = v
        .get("run_id")
        .and_then(|r| r.as_str())
        .ok_or_else(|| TaskError::BadInput("missing run_id".into()))?;
    crate::ids::parse_id("run", id, "run_id").map_err(|_| {
        TaskError::BadInput(format!(
            "bad run_id '{}'",
            id.chars().take(40).collect::<String>()
        ))
    })
}

/// The run's contract: from the execution's input (the queue puts it there; the state machine
/// passes `$$.Execution.Input` to the stages that need it as `execution`, so they do not each
/// read it) when it is the one the run links — its digest matches the link's — else read from
/// the table (an execution started by hand with just the run id works too).
pub async fn run_contract<S: Store>(
    store: &S,
    input: &serde_json::Value,
    rec: &RunRecord,
) -> Result<crate::model::RunContract, TaskError> {
    let p = &rec.payload;
    let linked = p.first_link("run_contract");
    let given = input
        .pointer("/execution/contract")
        .filter(|v| !v.is_null());
    if let (Some(v), Some(link)) = (given, linked) {
        if let Ok(c) = serde_json::from_value::<crate::model::RunContract>(v.clone()) {
            let digest = crate::proof::jcs::digest(&c).ok();
            if c.run_id == p.run_id
                && c.agent_id == p.agent_id
                && digest.is_some()
                && digest == link.sha256
            {
                return Ok(c);
            }
        }
        tracing::warn!(
            run_id = %p.run_id,
            "the task input's contract is not the run's; reading it"
        );
    }
    let id = crate::ids::run_object_id("rc", &p.run_id);
    Ok(crate::api::owned_object(store, &id, &p.agent_id, "run_id")
        .await?
        .decode()?)
}

/// The input of a run's execution: its id and its contract (`null` when it cannot be read now:
/// each stage then reads it itself).
pub async fn execution_input<S: Store>(store: &S, run_id: &str) -> serde_json::Value {
    let id = crate::ids::run_object_id("rc", run_id);
    let contract = match store.get(&crate::store::Key::object(&id)).await {
        Ok(Some(item)) => item.doc,
        Ok(None) => serde_json::Value::Null,
        Err(e) => {
            tracing::warn!(run_id, error = %e, "contract not read for the execution input");
            serde_json::Value::Null
        }
    };
    serde_json::json!({ "run_id": run_id, "contract": contract })
}
