//! The local orchestrator: executes `infra/statemachine.asl.json` — the file SAM deploys — with
//! the ASL engine, dispatching Task resources to the in-process stage handlers. Each execution's
//! progress is checkpointed in the table after every state, so a runtime killed mid-run resumes
//! the execution on restart (the interrupted state runs again; every stage is idempotent).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tokenops::config::Ctx;
use tokenops::error::StoreError;
use tokenops::ports::{HttpSender, Orchestrator, Started};
use tokenops::store::{DynamoStore, Item, Key, Store, Write};
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
}

impl TaskDispatcher for LocalTasks {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure> {
        let ctx = &self.ctx;
        let out = match resource.strip_prefix("local:").unwrap_or(resource) {
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
    tx: mpsc::UnboundedSender<String>,
}

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

impl Orchestrator for LocalOrchestrator {
    async fn start(&self, name: &str, input: Value) -> Result<Started, StoreError> {
        let def = definition();
        let st = ExecutionState::start(&def, name, input);
        match self
            .store
            .transact(vec![Write::create(exec_item(&st)?)])
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

/// Options for fault injection in the resume test: exit the process right after the checkpoint of
/// the named state (as a crash would), so restart-and-resume can be shown end to end.
#[derive(Clone, Default)]
pub struct Faults {
    pub crash_after_state: Option<String>,
}

impl LocalOrchestrator {
    /// Starts the worker that runs executions, and resumes every execution left RUNNING.
    pub async fn start_workers(
        ctx: Ctx<DynamoStore>,
        sender: HttpSender,
        engine: Engine,
        faults: Faults,
    ) -> Result<Self, StoreError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let orch = LocalOrchestrator {
            store: ctx.store.clone(),
            tx,
        };
        let tasks = LocalTasks {
            ctx: ctx.clone(),
            sender,
        };
        let store = ctx.store.clone();
        let engine = Arc::new(engine);
        let faults = Arc::new(faults);
        tokio::spawn(async move {
            while let Some(name) = rx.recv().await {
                let (store, tasks, engine, faults) =
                    (store.clone(), tasks.clone(), engine.clone(), faults.clone());
                tokio::spawn(async move {
                    if let Err(e) = run_execution(&store, &tasks, &engine, &faults, &name).await {
                        tracing::error!(execution = %name, error = %e, "execution stopped; it resumes on restart");
                    }
                });
            }
        });
        for item in ctx.store.query("EXEC", "EXEC#", None).await? {
            if item.get_attr("status") == Some("RUNNING") {
                let name = item.key.sk.trim_start_matches("EXEC#").to_string();
                tracing::info!(execution = %name, "resuming execution");
                let _ = orch.tx.send(name);
            }
        }
        Ok(orch)
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

async fn run_execution(
    store: &DynamoStore,
    tasks: &LocalTasks,
    engine: &Engine,
    faults: &Faults,
    name: &str,
) -> Result<(), String> {
    let def = definition();
    let mut st: ExecutionState = store
        .get(&exec_key(name))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("execution vanished")?
        .decode()
        .map_err(|e| e.to_string())?;
    while matches!(st.status, ExecutionStatus::Running) {
        let state_name = st.current.clone().unwrap_or_default();
        engine
            .step(&def, &mut st, tasks)
            .await
            .map_err(|e| e.to_string())?;
        // Checkpoint with retries: losing it only means re-running an idempotent state.
        let mut delay = std::time::Duration::from_millis(20);
        loop {
            match store
                .transact(vec![Write::put(exec_item(&st).map_err(|e| e.to_string())?)])
                .await
            {
                Ok(()) => break,
                Err(e) if delay < std::time::Duration::from_secs(5) => {
                    tracing::warn!(execution = %name, error = %e, "checkpoint failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        if faults.crash_after_state.as_deref() == Some(state_name.as_str()) {
            eprintln!("fault injection: exiting after state {state_name} of {name}");
            std::process::exit(86);
        }
    }
    match &st.status {
        ExecutionStatus::Failed { error, cause } => {
            tracing::error!(execution = %name, error, cause, "execution failed")
        }
        _ => tracing::info!(execution = %name, "execution finished"),
    }
    Ok(())
}
