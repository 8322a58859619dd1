//! Parity of the two ASL engines: `infra/statemachine.asl.json` run by the local engine
//! (`tokenops_local::asl`) and by the upstream emulator's Step Functions engine (moto, behind
//! `tokenops emulator`), on the same inputs and the same scripted tasks, visits the same states
//! with the same inputs and ends with the same status and output.
//!
//! Both engines call one task script ([`Script`]): the local engine through a [`TaskDispatcher`],
//! moto through Lambda `Invoke` of *external functions* the emulator forwards to this test's HTTP
//! server (`POST /_emulator/functions`). A case decides which task fails, with which error, how
//! many times, and which evidence status the execution stage reports. Every case also asserts a
//! written-down expected path and attempt counts, so a bug shared by both engines cannot pass.
//!
//! Where moto's engine departs from AWS Step Functions, the case says so ([`MotoDiffers`]): the
//! local engine is held to AWS's behaviour and moto's actual behaviour is asserted too, so the
//! difference stays visible (and the test fails, asking for an update, once moto changes).
//!
//! Like tests/tests/emulator.rs, this needs `TOKENOPS_EMULATOR` (`make test` sets it) and says
//! "skipped" without it, unless `TOKENOPS_REQUIRE_EMULATOR` is set. Everything it creates in the
//! emulator is named with a fresh ULID, so it can run alongside the other emulator tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sfn::types::ExecutionStatus as SfnStatus;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{json, Value};
use tokenops_local::asl::{
    Definition, Engine, ExecutionState, ExecutionStatus, TaskDispatcher, TaskFailure,
};
use tokenops_local::emulator::template::{function_arn, ACCOUNT};
use tokenops_local::orchestrator::local_substitutions;

const ASL: &str = include_str!("../../infra/statemachine.asl.json");

/// The full run path.
const DELIVERED: &[&str] = &[
    "TokenopsExecution",
    "EvidenceDecision",
    "ResultContract",
    "SettlementReceipt",
    "UsageReceipt",
    "Callback",
    "Ledger",
    "Attestation",
    "Delivered",
];

/// One scenario: the task script's behaviour and what both engines must do with it.
#[derive(Clone, Debug)]
struct Case {
    name: &'static str,
    /// `evidence_status` the execution stage (TokenopsExecution) reports; `EvidenceDecision`
    /// routes `partial` to the exception branch (`AwaitingEvidence`).
    evidence: &'static str,
    /// `(task, errorType, n)`: the task's next `n` attempts fail with `errorType` (entries for
    /// one task apply in order: the first `n1` attempts, then the next `n2`, …).
    fail: &'static [(&'static str, &'static str, u32)],
    /// A task that succeeds with a result lacking the fields its `ResultSelector` selects.
    malformed: Option<&'static str>,
    path: &'static [&'static str],
    /// `None`: succeeds; `Some(error)`: fails with that error.
    error: Option<&'static str>,
    /// Attempts per task (tasks not named: 1 if on the path).
    attempts: &'static [(&'static str, u32)],
    /// Set where moto is known to differ from AWS (the expectations above are AWS's).
    moto_differs: Option<MotoDiffers>,
}

/// What moto 5.2.5 does instead of AWS's behaviour, and why that is wrong.
#[derive(Clone, Debug)]
struct MotoDiffers {
    path: &'static [&'static str],
    outcome_error: &'static str,
    why: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "success",
            evidence: "complete",
            fail: &[],
            malformed: None,
            path: DELIVERED,
            error: None,
            attempts: &[],
            moto_differs: None,
        },
        Case {
            // Two retriers' errors: StoreUnavailable twice (waits 1 s + 2 s), then a Lambda
            // throttle once (1 s); both tasks then succeed and the run is delivered.
            name: "retry",
            evidence: "complete",
            fail: &[
                ("usage_receipt", "StoreUnavailable", 2),
                ("attestation", "Lambda.TooManyRequestsException", 1),
            ],
            malformed: None,
            path: DELIVERED,
            error: None,
            attempts: &[("usage_receipt", 3), ("attestation", 2)],
            moto_differs: None,
        },
        Case {
            // Not in the Retry list and not caught: the execution fails at the task that raised
            // it, with its error (the failure handler and a redrive start from there).
            name: "uncaught",
            evidence: "complete",
            fail: &[("result_contract", "ContractViolation", 1)],
            malformed: None,
            path: &["TokenopsExecution", "EvidenceDecision", "ResultContract"],
            error: Some("ContractViolation"),
            attempts: &[("result_contract", 1)],
            moto_differs: None,
        },
        Case {
            // Retryable but never recovers: 1 + MaxAttempts (3 in the test budget) attempts,
            // then the execution fails with the task's error.
            name: "retries-exhausted",
            evidence: "complete",
            fail: &[("settlement_receipt", "StoreUnavailable", 100)],
            malformed: None,
            path: &[
                "TokenopsExecution",
                "EvidenceDecision",
                "ResultContract",
                "SettlementReceipt",
            ],
            error: Some("StoreUnavailable"),
            attempts: &[("settlement_receipt", 4)],
            moto_differs: None,
        },
        Case {
            // The first catcher that matches wins: CallbackDeliveryFailed goes on to Ledger with
            // `$.callback_error`.
            name: "catch-continue",
            evidence: "complete",
            fail: &[("callback", "CallbackDeliveryFailed", 1)],
            malformed: None,
            path: DELIVERED,
            error: None,
            attempts: &[("callback", 1)],
            moto_differs: None,
        },
        Case {
            // Retried, then an error the retrier does not match: its catcher sees the last error.
            name: "retry-then-catch",
            evidence: "complete",
            fail: &[
                ("callback", "StoreUnavailable", 1),
                ("callback", "CallbackDeliveryFailed", 1),
            ],
            malformed: None,
            path: DELIVERED,
            error: None,
            attempts: &[("callback", 2)],
            moto_differs: None,
        },
        Case {
            // The exception branch: partial evidence ends at AwaitingEvidence (a Succeed state).
            name: "exception-branch",
            evidence: "partial",
            fail: &[],
            malformed: None,
            path: &["TokenopsExecution", "EvidenceDecision", "AwaitingEvidence"],
            error: None,
            attempts: &[("tokenops_execution", 1), ("result_contract", 0)],
            moto_differs: None,
        },
        Case {
            // A task result without the fields the ResultSelector selects: `States.Runtime`,
            // which fails the execution and is never retried (AWS Step Functions developer
            // guide, "Handling errors in Step Functions workflows": not even States.ALL catches
            // States.DataLimitExceeded or States.Runtime). moto fails the execution with a plain
            // `Exception` error instead.
            name: "runtime-error",
            evidence: "complete",
            fail: &[],
            malformed: Some("tokenops_execution"),
            path: &["TokenopsExecution"],
            error: Some("States.Runtime"),
            attempts: &[("tokenops_execution", 1)],
            moto_differs: Some(MotoDiffers {
                path: &["TokenopsExecution"],
                outcome_error: "Exception",
                why: "moto 5.2.5 reports a ResultSelector path miss as a catchable `Exception`; \
                      AWS raises States.Runtime",
            }),
        },
    ]
}

/// (engine, run id, task).
type Call = (String, String, String);

/// The task implementation both engines call. Attempts are counted per (engine, run, task).
#[derive(Clone, Default)]
struct Script {
    cases: Arc<BTreeMap<String, Case>>,
    attempts: Arc<Mutex<BTreeMap<Call, u32>>>,
}

/// A task failure as Lambda reports it: the error document `{"errorType", "errorMessage"}`.
struct Failure {
    error_type: String,
    document: String,
}

impl Script {
    fn attempts(&self, engine: &str, run_id: &str, task: &str) -> u32 {
        let key = (engine.to_string(), run_id.to_string(), task.to_string());
        self.attempts
            .lock()
            .unwrap()
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    /// Runs `task` for the run in `input` (`{"run_id"}`, and the execution's input as `execution`
    /// for the stages that use the contract: what the Tasks' `Parameters` pass).
    fn call(&self, engine: &str, task: &str, input: &Value) -> Result<Value, Failure> {
        let run_id = input["run_id"].as_str().unwrap_or_default().to_string();
        let failure = |error_type: &str, message: String| Failure {
            error_type: error_type.to_string(),
            document: json!({"errorType": error_type, "errorMessage": message}).to_string(),
        };
        let Some(case) = self.cases.get(&run_id) else {
            return Err(failure("UnknownRun", format!("no case for input {input}")));
        };
        let attempt = {
            let mut m = self.attempts.lock().unwrap();
            let n = m
                .entry((engine.to_string(), run_id.clone(), task.to_string()))
                .or_insert(0);
            *n += 1;
            *n
        };
        let mut until = 0;
        for (_, error_type, times) in case.fail.iter().filter(|(t, _, _)| *t == task) {
            until += times;
            if attempt <= until {
                return Err(failure(
                    error_type,
                    format!("{task} attempt {attempt} for {run_id}: scripted {error_type}"),
                ));
            }
        }
        if case.malformed == Some(task) {
            return Ok(json!({"stage": task}));
        }
        Ok(json!({
            "stage": task,
            "object_id": format!("{task}/{run_id}/attempt-{attempt}"),
            "state": format!("{task}_done"),
            "evidence_status": case.evidence,
            "ignored": "dropped by ResultSelector",
        }))
    }
}

/// The local engine's dispatcher: resources are `local:<task>` (the runtime's substitutions).
/// A failure's `Cause` is the error document, as Step Functions reports a Lambda function error.
struct LocalScript(Script);

impl TaskDispatcher for LocalScript {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure> {
        let task = resource.strip_prefix("local:").unwrap_or(resource);
        self.0
            .call("local", task, &input)
            .map_err(|f| TaskFailure::new(f.error_type, f.document))
    }
}

/// moto's side of the script: the external functions' endpoint, `POST /moto/{task}`.
async fn serve_script(
    State(script): State<Script>,
    Path(task): Path<String>,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, body) = match script.call("moto", &task, &input) {
        Ok(v) => (StatusCode::OK, v.to_string()),
        Err(f) => (StatusCode::INTERNAL_SERVER_ERROR, f.document),
    };
    (status, [("content-type", "application/json")], body)
}

/// What an engine did with one execution.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    /// Every state entered, in order, with its input.
    entered: Vec<(String, Value)>,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Succeeded(Value),
    Failed { error: String, cause: String },
}

impl Run {
    fn path(&self) -> Vec<&str> {
        self.entered.iter().map(|(s, _)| s.as_str()).collect()
    }
}

fn input_for(run_id: &str, case: &Case) -> Value {
    // The queue starts every execution with the run's contract (`stage::execution_input`).
    json!({"run_id": run_id, "contract": {"run_id": run_id}, "case": case.name, "requested_by": "asl-parity"})
}

async fn run_local(def: &Definition, script: &Script, run_id: &str, case: &Case) -> Run {
    let mut ex = ExecutionState::start(def, case.name, input_for(run_id, case));
    // Retry intervals scaled down: the local engine's waits are covered by its unit tests.
    Engine::new()
        .with_time_scale(0.001)
        .run(def, &mut ex, &LocalScript(script.clone()), |_| {})
        .await
        .expect("local execution runs");
    Run {
        entered: ex
            .history
            .iter()
            .map(|e| (e.state.clone(), e.input.clone()))
            .collect(),
        outcome: match ex.status {
            ExecutionStatus::Succeeded { output } => Outcome::Succeeded(output),
            ExecutionStatus::Failed { error, cause } => Outcome::Failed { error, cause },
            ExecutionStatus::Running => unreachable!("run returns finished executions"),
        },
    }
}

fn sdk_error(e: impl std::error::Error) -> String {
    format!("{}", aws_sdk_sfn::error::DisplayErrorContext(e))
}

async fn run_moto(
    sfn: aws_sdk_sfn::Client,
    state_machine: String,
    run_id: String,
    case: Case,
) -> Run {
    let started = sfn
        .start_execution()
        .state_machine_arn(&state_machine)
        .name(case.name)
        .input(input_for(&run_id, &case).to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: StartExecution: {}", case.name, sdk_error(e)));
    let arn = started.execution_arn().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let d = sfn
            .describe_execution()
            .execution_arn(&arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: DescribeExecution: {}", case.name, sdk_error(e)));
        if *d.status() != SfnStatus::Running {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "{}: moto's execution still running after 120 s",
            case.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut entered = vec![];
    let mut token = None;
    loop {
        let page = sfn
            .get_execution_history()
            .execution_arn(&arn)
            .max_results(1000)
            .set_next_token(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: GetExecutionHistory: {}", case.name, sdk_error(e)));
        for ev in page.events() {
            if let Some(d) = ev.state_entered_event_details() {
                let input = d
                    .input()
                    .map(|s| serde_json::from_str(s).expect("state input is JSON"))
                    .unwrap_or(Value::Null);
                entered.push((d.name().to_string(), input));
            }
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let outcome = match done.status() {
        SfnStatus::Succeeded => Outcome::Succeeded(
            serde_json::from_str(done.output().unwrap_or("null")).expect("output is JSON"),
        ),
        SfnStatus::Failed => Outcome::Failed {
            error: done.error().unwrap_or_default().to_string(),
            cause: done.cause().unwrap_or_default().to_string(),
        },
        other => panic!("{}: moto's execution ended {other:?}", case.name),
    };
    Run { entered, outcome }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_engine_and_moto_run_the_state_machine_alike() {
    let Some(info) = tokenops_tests::emulator_info().await else {
        return;
    };
    let endpoint = info["endpoint_url"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
    let cases = cases();
    let run_ids: Vec<String> = cases.iter().map(|c| format!("{}-{id}", c.name)).collect();
    let script = Script {
        cases: Arc::new(run_ids.iter().cloned().zip(cases.iter().cloned()).collect()),
        ..Script::default()
    };

    // The script over HTTP, for moto.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/moto/{task}", axum::routing::post(serve_script))
        .with_state(script.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // One external function per Task resource of the ASL, and the state machine over them.
    let http = reqwest::Client::new();
    let mut substitutions = BTreeMap::new();
    for (placeholder, resource) in local_substitutions() {
        let task = resource.trim_start_matches("local:");
        let name = format!("parity-{id}-{task}");
        let r = http
            .post(format!("{endpoint}/_emulator/functions"))
            .body(json!({"name": name, "url": format!("http://{addr}/moto/{task}")}).to_string())
            .send()
            .await
            .expect("emulator reachable");
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
        substitutions.insert(placeholder, function_arn(&name));
    }
    let asl = test_budget(ASL);
    let mut definition = asl.clone();
    for (placeholder, arn) in &substitutions {
        definition = definition.replace(&format!("${{{placeholder}}}"), arn);
    }
    assert!(
        !definition.contains("${"),
        "every placeholder is substituted"
    );
    let sfn = tokenops_local::emulator::sfn_client(&endpoint);
    let state_machine = sfn
        .create_state_machine()
        .name(format!("parity-{id}"))
        .definition(definition)
        .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/asl-parity"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateStateMachine: {}", sdk_error(e)))
        .state_machine_arn()
        .to_string();

    // Every case on moto at once (its retries wait real seconds), and on the local engine.
    let mut moto = tokio::task::JoinSet::new();
    for (run_id, case) in run_ids.iter().zip(&cases) {
        let (sfn, sm, run_id, case) = (
            sfn.clone(),
            state_machine.clone(),
            run_id.clone(),
            case.clone(),
        );
        moto.spawn(async move { (case.name, run_moto(sfn, sm, run_id, case).await) });
    }
    let def = Definition::parse(&asl, &local_substitutions()).expect("the ASL parses");
    let mut local = BTreeMap::new();
    for (run_id, case) in run_ids.iter().zip(&cases) {
        local.insert(case.name, run_local(&def, &script, run_id, case).await);
    }
    let mut moto_runs = BTreeMap::new();
    while let Some(r) = moto.join_next().await {
        let (name, run) = r.expect("moto case task");
        moto_runs.insert(name, run);
    }

    for (run_id, case) in run_ids.iter().zip(&cases) {
        let (l, m) = (&local[case.name], &moto_runs[case.name]);
        eprintln!("{}: {}", case.name, l.path().join(" → "));
        assert_eq!(l.path(), case.path, "{}: local engine's path", case.name);
        if let Some(d) = &case.moto_differs {
            eprintln!(
                "{}: moto differs (known): {}; moto's path: {}",
                case.name,
                d.why,
                m.path().join(" → ")
            );
            assert_eq!(m.path(), d.path, "{}: moto's (known) path", case.name);
            assert_eq!(l.entered[0], m.entered[0], "{}: same start", case.name);
            assert!(
                matches!(&m.outcome, Outcome::Failed { error, .. } if error == d.outcome_error),
                "{}: moto's outcome {:?}",
                case.name,
                m.outcome
            );
        } else {
            assert_eq!(m.path(), case.path, "{}: moto's path", case.name);
            assert_eq!(
                l.entered, m.entered,
                "{}: state inputs differ (left: local, right: moto)",
                case.name
            );
            assert_eq!(
                l.outcome, m.outcome,
                "{}: outcome differs (left: local, right: moto)",
                case.name
            );
        }
        match (&l.outcome, case.error) {
            (Outcome::Succeeded(_), None) => {}
            (Outcome::Failed { error, .. }, Some(expected)) => {
                assert_eq!(error, expected, "{}", case.name)
            }
            (o, expected) => panic!("{}: outcome {o:?}, expected error {expected:?}", case.name),
        }
        for engine in ["local", "moto"] {
            for task in case.path.iter().filter_map(|s| task_of(s)) {
                let expected = case
                    .attempts
                    .iter()
                    .find(|(t, _)| *t == task)
                    .map_or(1, |(_, n)| *n);
                assert_eq!(
                    script.attempts(engine, run_id, &task),
                    expected,
                    "{}: {engine} attempts of {task}",
                    case.name
                );
            }
            for (task, n) in case.attempts {
                assert_eq!(
                    script.attempts(engine, run_id, task),
                    *n,
                    "{}: {engine} attempts of {task}",
                    case.name
                );
            }
        }
    }
    // The data the cases were meant to exercise really flowed.
    let retry = &local["retry"];
    let Outcome::Succeeded(out) = &retry.outcome else {
        unreachable!()
    };
    assert_eq!(
        out["usage_receipt"]["object_id"],
        format!("usage_receipt/{}/attempt-3", run_ids[1])
    );
    assert!(
        out["usage_receipt"].get("ignored").is_none(),
        "ResultSelector applied"
    );
    // Uncaught: the execution fails at the task, with the task's error and cause.
    let Outcome::Failed { error, .. } = &local["uncaught"].outcome else {
        unreachable!()
    };
    assert_eq!(error, "ContractViolation");
    let continued = &local["catch-continue"].outcome;
    let Outcome::Succeeded(out) = continued else {
        unreachable!()
    };
    assert_eq!(out["callback_error"]["Error"], "CallbackDeliveryFailed");
    assert!(out.get("callback").is_none() && out.get("error").is_none());
    let Outcome::Succeeded(out) = &local["retry-then-catch"].outcome else {
        unreachable!()
    };
    assert_eq!(out["callback_error"]["Error"], "CallbackDeliveryFailed");
    let Outcome::Failed { cause, .. } = &local["runtime-error"].outcome else {
        unreachable!()
    };
    assert!(
        cause.contains("evidence_status") || cause.contains("object_id"),
        "{cause}"
    );
    eprintln!(
        "asl parity: {} cases ({} with a known moto difference), {:.1} s",
        cases.len(),
        cases.iter().filter(|c| c.moto_differs.is_some()).count(),
        t0.elapsed().as_secs_f64()
    );
}

/// The deployed retriers wait minutes (10 retries, delays up to 30 s: `tokenops::backoff`); the
/// test runs the same definition with a budget of 3 retries of at most 1 s each, so attempt counts
/// are the same on both engines and a case takes seconds. Everything else is the file as deployed.
fn test_budget(asl: &str) -> String {
    let mut def: Value = serde_json::from_str(asl).expect("the ASL is JSON");
    let mut shortened = 0;
    for st in def["States"].as_object_mut().unwrap().values_mut() {
        let retriers = st.get_mut("Retry").and_then(Value::as_array_mut);
        for r in retriers.into_iter().flatten() {
            if r.get("MaxDelaySeconds").is_some() {
                r["MaxAttempts"] = json!(3);
                r["MaxDelaySeconds"] = json!(1);
                shortened += 1;
            }
        }
    }
    assert!(shortened >= 7, "every task's transient retrier is capped");
    def.to_string()
}

/// The task a Task state runs (its resource), None for other states.
fn task_of(state: &str) -> Option<String> {
    local_substitutions()
        .get(&format!("{state}FunctionArn"))
        .map(|r| r.trim_start_matches("local:").to_string())
}
