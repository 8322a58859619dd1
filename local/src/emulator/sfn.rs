//! Step Functions' `RedriveExecution`, which moto (5.2.5) does not implement, answered at the
//! front; every other Step Functions request goes upstream unchanged.
//!
//! AWS resumes the failed execution **in place**: same execution ARN, the states that succeeded
//! are not run again (their results are kept), the failed state is retried, `redriveCount`
//! grows by one. moto cannot resume an execution, so the emulator does the closest thing it can
//! do honestly: it starts, in moto, a **new execution of the same state machine with the same
//! input**, named `<name>-redrive-<n>` (an *attempt*), and keeps the lineage *execution →
//! attempts*. What that changes, and what the emulator hides:
//!
//! * **Every state runs again from `StartAt`**, not from the failed one. This is sound only
//!   because every TokenOps task is idempotent: a stage that already succeeded answers its
//!   existing object without a second effect (`tokenops::stage::advance`; the execution stage
//!   reports `evidence_status: "sufficient"` for a reviewed run, which its `ResultSelector`
//!   needs). A state machine with non-idempotent tasks would see them twice here, never in AWS.
//! * **The execution's identity is kept where our code looks at it**: the EventBridge
//!   status-change events of an attempt ([`super::events`]) name the original execution (ARN,
//!   name, first `startDate`) with `redriveCount`; `DescribeExecution` of the original ARN
//!   answers the latest attempt's status, output, error and cause under the original ARN and
//!   name, with `redriveCount` and `redriveDate`.
//! * **Not hidden**: `ListExecutions` and `GetExecutionHistory` are moto's — attempts are listed
//!   as executions of their own and the original's history ends at its failure. The lineage lives
//!   in the emulator's memory: an emulator restarted over the same moto forgets it.
//!
//! Refusals follow AWS: an execution that does not exist → `ExecutionDoesNotExist`; one that is
//! `RUNNING` or `SUCCEEDED` (the latest attempt's status), or was redriven 1000 times →
//! `ExecutionNotRedrivable`. Redrives of one execution are serialized, so two racing redrives
//! start one attempt and the other is refused as AWS refuses a redrive of a running execution.
//! The 14-day redrivable period is not enforced.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_sfn::error::ProvideErrorMetadata;
use aws_sdk_sfn::primitives::DateTime;
use aws_sdk_sfn::types::ExecutionStatus;
use axum::response::Response;
use serde_json::{json, Value};

use super::front::{json_response, Front};

/// AWS's bound on redrives of one execution.
pub const MAX_REDRIVES: usize = 1000;

/// An execution as AWS would name it, for an upstream execution that may be a redrive attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct Logical {
    pub arn: String,
    pub name: String,
    /// The original execution's start (epoch ms); `None` when it is the upstream one's own.
    pub start_ms: Option<i64>,
    pub redrive_count: usize,
    /// When the latest redrive started (epoch ms).
    pub redrive_ms: Option<i64>,
}

#[derive(Clone, Debug)]
struct Lineage {
    name: String,
    start_ms: i64,
    /// (attempt ARN, redrive time in epoch ms), oldest first.
    attempts: Vec<(String, i64)>,
}

#[derive(Default)]
struct State {
    /// By the original execution's ARN.
    lineages: BTreeMap<String, Lineage>,
    /// Attempt ARN → original ARN.
    attempt_of: BTreeMap<String, String>,
}

/// The redrive lineages (shared by the front and the status-change watcher).
#[derive(Clone, Default)]
pub struct Lineages {
    state: Arc<tokio::sync::Mutex<State>>,
}

impl Lineages {
    /// What an upstream execution is to AWS's eyes: itself, or attempt n of an original.
    pub async fn logical(&self, upstream_arn: &str) -> Option<Logical> {
        let st = self.state.lock().await;
        let original = st.attempt_of.get(upstream_arn)?;
        let l = st.lineages.get(original)?;
        let n = l.attempts.iter().position(|(a, _)| a == upstream_arn)? + 1;
        Some(Logical {
            arn: original.clone(),
            name: l.name.clone(),
            start_ms: Some(l.start_ms),
            redrive_count: n,
            redrive_ms: Some(l.attempts[n - 1].1),
        })
    }

    /// The original and the upstream execution that currently stands for it (its latest attempt),
    /// with the redrive count, for an execution ARN as a client names it.
    async fn current(&self, arn: &str) -> (String, String, usize, Option<i64>) {
        let st = self.state.lock().await;
        let original = st
            .attempt_of
            .get(arn)
            .cloned()
            .unwrap_or_else(|| arn.into());
        match st.lineages.get(&original) {
            Some(l) => {
                let (latest, at) = l.attempts.last().cloned().unwrap_or_default();
                (original, latest, l.attempts.len(), Some(at))
            }
            None => (original.clone(), original, 0, None),
        }
    }
}

fn epoch_ms(d: Option<&DateTime>) -> Option<i64> {
    d.and_then(|d| d.to_millis().ok())
}

fn epoch_secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn now_ms() -> i64 {
    (tokenops::ids::now().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A Step Functions error as the AWS JSON protocol carries it.
fn sfn_error(status: u16, code: &str, message: &str) -> Response {
    json_response(status, &json!({"__type": code, "message": message}))
}

fn upstream_error<E: ProvideErrorMetadata>(what: &str, e: &E) -> Response {
    let code = e.code().unwrap_or("ServiceUnavailable");
    let message = format!("{what}: {}", e.message().unwrap_or("upstream error"));
    let status = if code == "ServiceUnavailable" {
        503
    } else {
        400
    };
    sfn_error(status, code, &message)
}

/// `AWSStepFunctions.RedriveExecution` (`{"executionArn": …, "clientToken"?: …}`).
pub async fn redrive_execution(front: &Front, body: &[u8]) -> Response {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Some(arn) = req["executionArn"].as_str().filter(|a| !a.is_empty()) else {
        return sfn_error(400, "ValidationException", "executionArn is required");
    };
    if !arn.starts_with("arn:aws:states:") || !arn.contains(":execution:") {
        return sfn_error(400, "InvalidArn", &format!("Invalid Arn: '{arn}'"));
    }
    // One redrive of an execution at a time: the status check and the start are one step.
    let mut st = front.lineages.state.lock().await;
    let original = st
        .attempt_of
        .get(arn)
        .cloned()
        .unwrap_or_else(|| arn.into());
    let (latest, done) = match st.lineages.get(&original) {
        Some(l) => (
            l.attempts.last().map(|a| a.0.clone()).unwrap_or_default(),
            l.attempts.len(),
        ),
        None => (original.clone(), 0),
    };
    let d = match front
        .sfn
        .describe_execution()
        .execution_arn(&latest)
        .send()
        .await
    {
        Ok(d) => d,
        Err(e) if e.code() == Some("ExecutionDoesNotExist") => {
            return sfn_error(
                400,
                "ExecutionDoesNotExist",
                &format!("Execution Does Not Exist: '{arn}'"),
            )
        }
        Err(e) => return upstream_error("DescribeExecution", &e),
    };
    let status = d.status().clone();
    if !matches!(
        status,
        ExecutionStatus::Failed | ExecutionStatus::TimedOut | ExecutionStatus::Aborted
    ) {
        return sfn_error(
            400,
            "ExecutionNotRedrivable",
            &format!(
                "Execution is {} and cannot be redriven: '{original}'",
                status.as_str()
            ),
        );
    }
    if done >= MAX_REDRIVES {
        return sfn_error(
            400,
            "ExecutionNotRedrivable",
            &format!("Execution has been redriven {MAX_REDRIVES} times: '{original}'"),
        );
    }
    let (name, start_ms) = match st.lineages.get(&original) {
        Some(l) => (l.name.clone(), l.start_ms),
        None => (
            d.name().unwrap_or_default().to_string(),
            epoch_ms(Some(d.start_date())).unwrap_or_default(),
        ),
    };
    let attempt_name = format!("{name}-redrive-{}", done + 1);
    let started = front
        .sfn
        .start_execution()
        .state_machine_arn(d.state_machine_arn())
        .name(&attempt_name)
        .set_input(d.input().map(str::to_string))
        .send()
        .await;
    let attempt = match started {
        Ok(s) => s.execution_arn().to_string(),
        Err(e) => return upstream_error("StartExecution", &e),
    };
    let at = now_ms();
    tracing::info!(execution = %original, %attempt, redrive = done + 1, "RedriveExecution emulated: the same input started again from StartAt");
    st.lineages
        .entry(original.clone())
        .or_insert_with(|| Lineage {
            name,
            start_ms,
            attempts: vec![],
        })
        .attempts
        .push((attempt.clone(), at));
    st.attempt_of.insert(attempt, original);
    json_response(200, &json!({"redriveDate": epoch_secs(at)}))
}

/// `AWSStepFunctions.DescribeExecution` of a redriven execution (its original ARN): the latest
/// attempt, under the original's ARN, name and start, with `redriveCount` and `redriveDate`.
/// `None` for any other execution: the request goes upstream unchanged.
pub async fn describe_execution(front: &Front, body: &[u8]) -> Option<Response> {
    let req: Value = serde_json::from_slice(body).ok()?;
    let arn = req["executionArn"].as_str()?;
    let (original, latest, count, redrive_ms) = front.lineages.current(arn).await;
    if count == 0 || original != arn {
        return None;
    }
    let start_ms = {
        let st = front.lineages.state.lock().await;
        st.lineages.get(&original).map(|l| l.start_ms)
    };
    let d = match front
        .sfn
        .describe_execution()
        .execution_arn(&latest)
        .send()
        .await
    {
        Ok(d) => d,
        Err(e) => return Some(upstream_error("DescribeExecution", &e)),
    };
    let name = original.rsplit(':').next().unwrap_or_default();
    let status = d.status().as_str();
    let mut out = json!({
        "executionArn": original,
        "stateMachineArn": d.state_machine_arn(),
        "name": name,
        "status": status,
        "startDate": epoch_secs(start_ms.unwrap_or_default()),
        "input": d.input(),
        "inputDetails": {"included": true},
        "redriveCount": count,
        "redriveDate": redrive_ms.map(epoch_secs),
        "redriveStatus": if matches!(status, "FAILED" | "TIMED_OUT" | "ABORTED") { "REDRIVABLE" } else { "NOT_REDRIVABLE" },
    });
    if let Some(m) = out.as_object_mut() {
        if let Some(stop) = epoch_ms(d.stop_date()) {
            m.insert("stopDate".into(), json!(epoch_secs(stop)));
        }
        if let Some(o) = d.output() {
            m.insert("output".into(), json!(o));
            m.insert("outputDetails".into(), json!({"included": true}));
        }
        if let Some(e) = d.error() {
            m.insert("error".into(), json!(e));
        }
        if let Some(c) = d.cause() {
            m.insert("cause".into(), json!(c));
        }
        if matches!(status, "RUNNING" | "SUCCEEDED") {
            m.insert(
                "redriveStatusReason".into(),
                json!(format!("Execution is {status} and cannot be redriven")),
            );
        }
    }
    Some(json_response(200, &out))
}
