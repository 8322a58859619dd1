//! The local orchestrator: executes `infra/statemachine.asl.json` — the file SAM deploys — with
//! the ASL engine, dispatching Task resources to the in-process stage handlers. Each execution's
//! progress is checkpointed in the table after every state, so a runtime killed mid-run resumes
//! the execution on restart (the interrupted state runs again; every stage is idempotent).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokenops::config::Ctx;
use tokenops::error::StoreError;
use tokenops::model::FailedExecution;
use tokenops::ports::{HttpSender, Orchestrator, Redriven, Started};
use tokenops::store::{Cond, Item, Key, Store, Write};
use tokenops_aws::DynamoStore;
use tokio::sync::mpsc;

use crate::asl::{
    Definition, Engine, ExecutionState, ExecutionStatus, TaskDispatcher, TaskFailure,
};

/// The state machine definition, compiled in so the binary runs from anywhere.
pub const ASL: &str = include_str!("../../infra/statemachine.asl.json");

/// `${XFunctionArn}` → `local:<stage>`: the same names SAM's DefinitionSubstitutions fill.
pub fn local_substitutions() -> BTreeMap<String, String> {
    // The Step Functions tasks: every stage after the queue.
    tokenops::model::PATH
        .iter()
        .skip_while(|s| **s != "tokenops_execution")
        .map(|s| (format!("{}FunctionArn", pascal(s)), format!("local:{s}")))
        .collect()
}

pub fn pascal(stage: &str) -> String {
    stage
        .split('_')
        .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
        .collect()
}

/// Dispatches Task resources to the stage handlers linked into this process.
#[derive(Clone)]
pub struct LocalTasks {
    pub ctx: Ctx<DynamoStore>,
    pub sender: HttpSender,
    pub faults: Faults,
    /// The engine's own records (executions, checkpoints): what Step Functions keeps in AWS,
    /// so counted apart from the handlers' requests.
    pub engine_store: DynamoStore,
    pub counters: Arc<EngineCounters>,
}

/// What the engine did: states entered (Step Functions' billed state transitions) and Task
/// states run (Lambda invocations in AWS).
#[derive(Default)]
pub struct EngineCounters {
    transitions: std::sync::atomic::AtomicU64,
    tasks: std::sync::atomic::AtomicU64,
    billed_ms: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineCounts {
    pub transitions: u64,
    pub tasks: u64,
    /// Executions' run time as Step Functions Express would bill it (each rounded up to 100 ms):
    /// the bench prices the Express shape with it.
    pub billed_ms: u64,
    /// The engine's own store requests (standing in for Step Functions' state).
    pub store_requests: u64,
}

impl TaskDispatcher for LocalTasks {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure> {
        let ctx = &self.ctx;
        let stage = resource.strip_prefix("local:").unwrap_or(resource);
        if let Some(error) = self.faults.injected(stage) {
            return Err(TaskFailure {
                error,
                cause: format!("fault injected into {stage}"),
            });
        }
        let out = match stage {
            "tokenops_execution" => tokenops_execution::run_task(ctx, input).await,
            "result_contract" => result_contract::run_task(ctx, input).await,
            "settlement_receipt" => settlement_receipt::run_task(ctx, input).await,
            "usage_receipt" => usage_receipt::run_task(ctx, input).await,
            "callback" => callback::run_task(ctx, &self.sender, input).await,
            "ledger" => ledger::run_task(ctx, input).await,
            "attestation" => attestation::run_task(ctx, input).await,
            other => {
                return Err(TaskFailure {
                    error: "States.TaskFailed".into(),
                    cause: format!("no local function for resource {other}"),
                })
            }
        };
        match out {
            Ok(o) => serde_json::to_value(o).map_err(|e| TaskFailure {
                error: "Internal".into(),
                cause: e.to_string(),
            }),
            Err(e) => Err(TaskFailure {
                error: e.error_type().into(),
                cause: e.to_string(),
            }),
        }
    }
}

#[derive(Clone)]
pub struct LocalOrchestrator {
    store: DynamoStore,
    counters: Arc<EngineCounters>,
    tx: mpsc::UnboundedSender<String>,
    /// Executions a worker of this process is running now: the relay resumes only the others.
    active: Arc<Mutex<HashSet<String>>>,
    /// Resumes of executions paused by an outage: (tries, not before). Spaced by the transient
    /// rule and bounded, so an execution that cannot make progress stops being retried (it stays
    /// RUNNING, visible, until a restart tries again).
    resumes: Arc<Mutex<HashMap<String, (u32, std::time::Instant)>>>,
}

/// Resumes of one paused execution before the relay gives up on it (each resume has the whole
/// transient budget of its own: about 1.5 minutes on average).
const MAX_RESUMES: u32 = 10;

fn exec_key(name: &str) -> Key {
    Key::new("EXEC", format!("EXEC#{name}"))
}

fn exec_item(st: &ExecutionState) -> Result<Item, StoreError> {
    let status = match &st.status {
        ExecutionStatus::Running => "RUNNING",
        ExecutionStatus::Succeeded { .. } => "SUCCEEDED",
        ExecutionStatus::Failed { .. } => "FAILED",
    };
    Ok(Item::of(exec_key(&st.name), "execution", None, st)?.attr("status", status))
}

/// The checkpoint of an execution; a FAILED one also records the failure in the `FAILING`
/// outbox in the same transaction, so a crash before the failure handler ran loses nothing.
/// The index of RUNNING executions (`RUNNING/<name>`): written when an execution starts or is
/// redriven, deleted with its final checkpoint, so the relay reads only what runs, not every
/// execution ever.
fn running_key(name: &str) -> Key {
    Key::new("RUNNING", name)
}

fn running_write(name: &str) -> Write {
    Write::put(Item::new(
        running_key(name),
        "running_execution",
        None,
        Value::Null,
    ))
}

fn checkpoint_writes(st: &ExecutionState) -> Result<Vec<Write>, StoreError> {
    let mut writes = vec![Write::put(exec_item(st)?)];
    if st.is_finished() {
        writes.push(Write::Delete {
            key: running_key(&st.name),
            conds: vec![],
        });
    }
    if let ExecutionStatus::Failed { error, cause } = &st.status {
        writes.push(queue::failure::failing_write(&FailedExecution {
            execution: st.name.clone(),
            error: error.clone(),
            cause: cause.clone(),
        }));
    }
    Ok(writes)
}

impl Orchestrator for LocalOrchestrator {
    async fn start(&self, name: &str, input: Value) -> Result<Started, StoreError> {
        let def = definition();
        let st = ExecutionState::start(&def, name, input);
        match self
            .store
            .transact(vec![Write::create(exec_item(&st)?), running_write(name)])
            .await
        {
            Ok(()) => {
                let _ = self.tx.send(name.to_string());
                Ok(Started::New)
            }
            Err(StoreError::ConditionFailed) => Ok(Started::AlreadyExists),
            Err(e) => Err(e),
        }
    }

    async fn redrive(&self, name: &str) -> Result<Redriven, StoreError> {
        let Some(mut st) = self.execution(name).await? else {
            return Ok(Redriven::NotFound);
        };
        if !st.redrive() {
            return Ok(Redriven::NotFailed);
        }
        // Only from FAILED, so two redrives of one failure resume it once.
        let write = Write::put_if(
            exec_item(&st)?,
            vec![Cond::AttrEq("status".into(), "FAILED".into())],
        );
        match self.store.transact(vec![write, running_write(name)]).await {
            Ok(()) => {
                tracing::info!(execution = %name, redrive = st.redrive_count, state = st.current.as_deref().unwrap_or(""), "redriving execution");
                let _ = self.tx.send(name.to_string());
                Ok(Redriven::Yes)
            }
            Err(StoreError::ConditionFailed) => Ok(Redriven::NotFailed),
            Err(e) => Err(e),
        }
    }
}

fn definition() -> Arc<Definition> {
    static DEF: std::sync::OnceLock<Arc<Definition>> = std::sync::OnceLock::new();
    DEF.get_or_init(|| {
        Arc::new(
            Definition::parse(ASL, &local_substitutions())
                .expect("infra/statemachine.asl.json is validated by the test suite"),
        )
    })
    .clone()
}

/// Fault injection for tests: exit the process right after the checkpoint of the named state
/// (as a crash would), or make a stage fail with an error that cannot heal.
#[derive(Clone, Default)]
pub struct Faults {
    pub crash_after_state: Option<String>,
    /// Stage name → error type its task raises (instead of running) while the switch is set.
    pub fail_stage: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Faults {
    pub fn fail_stage(&self, stage: &str, error: &str) {
        self.lock().insert(stage.into(), error.into());
    }
    pub fn heal_stage(&self, stage: &str) {
        self.lock().remove(stage);
    }
    fn injected(&self, stage: &str) -> Option<String> {
        self.lock().get(stage).cloned()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.fail_stage.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LocalOrchestrator {
    pub fn counts(&self) -> EngineCounts {
        use std::sync::atomic::Ordering::Relaxed;
        EngineCounts {
            transitions: self.counters.transitions.load(Relaxed),
            tasks: self.counters.tasks.load(Relaxed),
            billed_ms: self.counters.billed_ms.load(Relaxed),
            store_requests: tokenops::store::Store::requests(&self.store).total(),
        }
    }

    /// Starts the worker that runs executions, and resumes every execution left RUNNING.
    pub async fn start_workers(
        ctx: Ctx<DynamoStore>,
        sender: HttpSender,
        engine: Engine,
        faults: Faults,
    ) -> Result<Self, StoreError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let engine_store = ctx.store.counted_apart();
        let counters = Arc::new(EngineCounters::default());
        let orch = LocalOrchestrator {
            store: engine_store.clone(),
            counters: counters.clone(),
            tx,
            active: Arc::default(),
            resumes: Arc::default(),
        };
        let tasks = LocalTasks {
            ctx: ctx.clone(),
            sender,
            faults: faults.clone(),
            engine_store,
            counters,
        };
        let engine = Arc::new(engine);
        let faults = Arc::new(faults);
        let (active, resumes) = (orch.active.clone(), orch.resumes.clone());
        tokio::spawn(async move {
            while let Some(name) = rx.recv().await {
                if !active
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone())
                {
                    continue; // a worker runs it already
                }
                let (tasks, engine, faults, active, resumes) = (
                    tasks.clone(),
                    engine.clone(),
                    faults.clone(),
                    active.clone(),
                    resumes.clone(),
                );
                tokio::spawn(async move {
                    let outcome = run_execution(&tasks, &engine, &faults, &name).await;
                    active
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&name);
                    if outcome.is_ok() {
                        resumes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&name);
                    }
                    match outcome {
                        Ok(Some(failed)) => {
                            // What the queue function does in AWS on a failed sync execution.
                            if let Err(e) =
                                queue::failure::handle(&tasks.ctx, &tasks.sender, &failed).await
                            {
                                tracing::warn!(execution = %name, error = %e, "failure handler did not finish; the relay retries it");
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(execution = %name, error = %e, "execution paused: the store is unavailable; the relay resumes it")
                        }
                    }
                });
            }
        });
        // Data dirs from before the RUNNING index: index what runs, once, at start.
        let unindexed: Vec<Write> = orch
            .store
            .query("EXEC", "EXEC#", None)
            .await?
            .iter()
            .filter(|i| i.get_attr("status") == Some("RUNNING"))
            .map(|i| running_write(i.key.sk.trim_start_matches("EXEC#")))
            .collect();
        for w in unindexed {
            orch.store.transact(vec![w]).await?;
        }
        orch.resume_stalled().await?;
        Ok(orch)
    }

    /// Hands every RUNNING execution that no worker here is running to a worker: at start (a
    /// killed runtime) and from the relay (an execution paused by an outage). Returns how many.
    pub async fn resume_stalled(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.store.query("RUNNING", "run_", None).await? {
            let name = item.key.sk.clone();
            if self
                .active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&name)
            {
                continue;
            }
            {
                let mut resumes = self.resumes.lock().unwrap_or_else(|p| p.into_inner());
                let now = std::time::Instant::now();
                let entry = resumes.entry(name.clone()).or_insert((0, now));
                if entry.1 > now || entry.0 > MAX_RESUMES {
                    continue;
                }
                entry.0 += 1;
                if entry.0 > MAX_RESUMES {
                    tracing::error!(execution = %name, tries = MAX_RESUMES, "relay gave up resuming this execution; it stays RUNNING until a restart");
                    continue;
                }
                entry.1 = now + tokenops::backoff::Backoff::TRANSIENT.ceiling(entry.0 - 1);
            }
            tracing::info!(execution = %name, "resuming execution");
            let _ = self.tx.send(name);
            n += 1;
        }
        Ok(n)
    }

    /// The persisted state of an execution (history included), for tests and `GET`-style inspection.
    pub async fn execution(&self, name: &str) -> Result<Option<ExecutionState>, StoreError> {
        self.store
            .get(&exec_key(name))
            .await?
            .map(|i| i.decode())
            .transpose()
    }
}

/// Runs an execution to its end from its last checkpoint. `Ok(Some)` when it failed (for the
/// failure handler); `Err` when the store stayed unavailable past the transient budget: the
/// execution stays RUNNING and the relay resumes it.
async fn run_execution(
    tasks: &LocalTasks,
    engine: &Engine,
    faults: &Faults,
    name: &str,
) -> Result<Option<FailedExecution>, StoreError> {
    let started = std::time::Instant::now();
    let store = &tasks.engine_store;
    let backoff = tasks.ctx.config.transient;
    let def = definition();
    let key = exec_key(name);
    let mut st: ExecutionState = with_retries(backoff, name, || store.get(&key))
        .await?
        .ok_or_else(|| StoreError::Corrupt {
            key: name.into(),
            reason: "execution vanished".into(),
        })?
        .decode()?;
    while matches!(st.status, ExecutionStatus::Running) {
        let state_name = st.current.clone().unwrap_or_default();
        {
            use std::sync::atomic::Ordering::Relaxed;
            tasks.counters.transitions.fetch_add(1, Relaxed);
            if def.state_type(&state_name) == Some("Task") {
                tasks.counters.tasks.fetch_add(1, Relaxed);
            }
        }
        engine
            .step(&def, &mut st, tasks)
            .await
            .map_err(|e| StoreError::Corrupt {
                key: name.into(),
                reason: e.to_string(),
            })?;
        // Checkpoint under the transient rule: losing it only means re-running an idempotent state.
        let writes = checkpoint_writes(&st)?;
        with_retries(backoff, name, || store.transact(writes.clone())).await?;
        if faults.crash_after_state.as_deref() == Some(state_name.as_str()) {
            eprintln!("fault injection: exiting after state {state_name} of {name}");
            std::process::exit(86);
        }
    }
    let billed = started.elapsed().as_millis().div_ceil(100) * 100;
    tasks.counters.billed_ms.fetch_add(
        u64::try_from(billed).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
    match &st.status {
        ExecutionStatus::Failed { error, cause } => {
            tracing::error!(execution = %name, error, cause, "execution failed");
            Ok(Some(FailedExecution {
                execution: name.into(),
                error: error.clone(),
                cause: cause.clone(),
            }))
        }
        _ => {
            tracing::info!(execution = %name, "execution finished");
            Ok(None)
        }
    }
}

/// Retries a store call that found the store unavailable, under [`tokenops::backoff::Backoff`].
async fn with_retries<T, F, Fut>(
    backoff: tokenops::backoff::Backoff,
    name: &str,
    mut call: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(StoreError::Unavailable(e)) if tries < backoff.retries => {
                tracing::warn!(execution = %name, error = %e, retry = tries + 1, "store unavailable; retrying");
                tokio::time::sleep(backoff.delay(tries)).await;
                tries += 1;
            }
            other => return other,
        }
    }
}
