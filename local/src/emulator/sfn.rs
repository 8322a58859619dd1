//! Step Functions' `StartSyncExecution`, which moto (5.2.5) does not serve, answered at the
//! front; every other Step Functions request goes upstream unchanged.
//!
//! The emulator starts the execution in moto (`StartExecution`), polls `DescribeExecution` until
//! it stops, and answers what AWS answers an Express workflow's synchronous start: `status`
//! (`SUCCEEDED`, `FAILED`, `TIMED_OUT`), `error`, `cause`, `output`, the dates, and
//! `billingDetails` (the duration rounded up to 100 ms, 64 MB). What differs from AWS:
//!
//! * moto runs it as it runs any execution, so it is also visible to `ListExecutions` and
//!   `DescribeExecution`, which AWS does not offer for Express executions.
//! * Express names need not be unique, moto's do: the upstream execution is named
//!   `<name>-<8 hex>` and reported by the name asked for, with an Express ARN
//!   (`…:express:<machine>:<name>:<id>`).
//! * Express's five-minute limit is kept by the emulator: past it, the upstream execution is
//!   stopped and the answer is `TIMED_OUT` (`States.Timeout`).

use std::time::{Duration, Instant};

use aws_sdk_sfn::error::ProvideErrorMetadata;
use aws_sdk_sfn::primitives::DateTime;
use aws_sdk_sfn::types::ExecutionStatus;
use axum::response::Response;
use rand::RngCore;
use serde_json::{json, Value};

use super::front::{json_response, Front};

/// An Express execution's longest life.
pub const EXPRESS_LIMIT: Duration = Duration::from_secs(300);
/// AWS's longest execution name.
const MAX_NAME: usize = 80;

fn epoch_secs(d: Option<&DateTime>) -> Value {
    d.and_then(|d| d.to_millis().ok())
        .map(|ms| json!(ms as f64 / 1000.0))
        .unwrap_or(Value::Null)
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

/// How long to wait before the next `DescribeExecution`: short at first (most runs end within a
/// second), then every 50 ms.
fn poll_delay(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_secs(1) {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(50)
    }
}

/// `AWSStepFunctions.StartSyncExecution` (`{"stateMachineArn", "name"?, "input"?}`).
pub async fn start_sync_execution(front: &Front, body: &[u8]) -> Response {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return sfn_error(
                400,
                "SerializationException",
                &format!("bad request body: {e}"),
            )
        }
    };
    let Some(machine) = req.get("stateMachineArn").and_then(Value::as_str) else {
        return sfn_error(400, "ValidationException", "stateMachineArn is required");
    };
    let mut id = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut id);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let name = req
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| id.clone());
    if name.len() > MAX_NAME {
        return sfn_error(400, "InvalidName", "name is longer than 80 characters");
    }
    let mut upstream_name = name.chars().take(MAX_NAME - 9).collect::<String>();
    upstream_name.push('-');
    upstream_name.push_str(&id);
    let input = req.get("input").and_then(Value::as_str).unwrap_or("{}");
    let started = front
        .sfn
        .start_execution()
        .state_machine_arn(machine)
        .name(&upstream_name)
        .input(input)
        .send()
        .await;
    let upstream_arn = match started {
        Ok(s) => s.execution_arn().to_string(),
        Err(e) => return upstream_error("StartExecution", &e),
    };
    let t0 = Instant::now();
    let (d, timed_out) = loop {
        tokio::time::sleep(poll_delay(t0.elapsed())).await;
        let d = match front
            .sfn
            .describe_execution()
            .execution_arn(&upstream_arn)
            .send()
            .await
        {
            Ok(d) => d,
            Err(e) => return upstream_error("DescribeExecution", &e),
        };
        if d.status() != &ExecutionStatus::Running {
            break (d, false);
        }
        if t0.elapsed() > EXPRESS_LIMIT {
            if let Err(e) = front
                .sfn
                .stop_execution()
                .execution_arn(&upstream_arn)
                .send()
                .await
            {
                tracing::warn!(execution = %upstream_arn, error = %e.message().unwrap_or("upstream error"), "StopExecution of a timed-out execution failed");
            }
            break (d, true);
        }
    };
    let billed_ms = t0.elapsed().as_millis().div_ceil(100) * 100;
    let (status, error, cause) = if timed_out {
        (
            "TIMED_OUT",
            Some("States.Timeout"),
            Some("the execution ran past Express's five minutes"),
        )
    } else {
        let status = match d.status() {
            ExecutionStatus::Succeeded => "SUCCEEDED",
            ExecutionStatus::TimedOut => "TIMED_OUT",
            // FAILED, and ABORTED (which a sync start reports as FAILED).
            _ => "FAILED",
        };
        (status, d.error(), d.cause())
    };
    let machine_name = machine.rsplit(':').next().unwrap_or_default();
    let arn = machine.replacen(":stateMachine:", ":express:", 1).replacen(
        &format!(":{machine_name}"),
        &format!(":{machine_name}:{name}:{id}"),
        1,
    );
    let mut out = json!({
        "executionArn": arn,
        "stateMachineArn": machine,
        "name": name,
        "startDate": epoch_secs(Some(d.start_date())),
        "stopDate": match d.stop_date() {
            Some(s) => epoch_secs(Some(s)),
            None => json!(tokenops::ids::now().unix_timestamp_nanos() as f64 / 1e9),
        },
        "status": status,
        "input": input,
        "inputDetails": {"included": true},
        "billingDetails": {"billedMemoryUsedInMB": 64, "billedDurationInMilliseconds": billed_ms},
    });
    let m = out.as_object_mut().expect("an object");
    if let Some(e) = error {
        m.insert("error".into(), json!(e));
    }
    if let Some(c) = cause {
        m.insert("cause".into(), json!(c));
    }
    if let Some(o) = d.output() {
        m.insert("output".into(), json!(o));
        m.insert("outputDetails".into(), json!({"included": true}));
    }
    json_response(200, &out)
}
