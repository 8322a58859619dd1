//! The EventBridge parts of the template that moto (5.2.5) does not play, played by the emulator:
//!
//! * **Step Functions status changes** ([`watch_executions`]): moto's Step Functions emits no
//!   events, so the emulator polls it (`ListExecutions` + `DescribeExecution` on the template's
//!   state machines, every `poll` interval) and, for each execution that newly reached a terminal
//!   status (`SUCCEEDED`, `FAILED`, `TIMED_OUT`, `ABORTED`), builds the
//!   "Step Functions Execution Status Change" event AWS sends ([`status_change_event`]) and
//!   invokes every function whose `EventBridgeRule` pattern matches it. A redrive attempt
//!   ([`super::sfn`]) is reported as the execution it redrives (ARN, name, `redriveCount`).
//!   Delivery is at least once per status change, like Lambda's asynchronous invocation: a
//!   function error is retried twice (after 1 s and 2 s here; about 1 and 2 minutes in AWS).
//!   Not emitted: `RUNNING` (the watcher sees executions only when they have stopped) and
//!   `PENDING_REDRIVE`. Executions that had stopped before the emulator started are not reported
//!   (AWS does not replay history to a new rule either).
//! * **Schedules** ([`run_schedule`]): a `Schedule` event invokes its function with a
//!   `Scheduled Event` every period — the template's `rate(…)`, or `--schedule-interval` when
//!   given (tests use seconds). One tick at a time: the next starts a period after the previous
//!   invocation ended (EventBridge would invoke on time, overlapping a slow tick).
//!
//! Event patterns ([`matches`]) are EventBridge's for exact values: every field of the pattern
//! must be in the event; an array matches when the event's value (or, for an array, any of its
//! elements) equals one of its entries; objects nest. Content filters are refused when the
//! template is read (`Resolver::resolve_pattern`).

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_sfn::types::ExecutionStatus;
use rand::RngCore;
use serde_json::{json, Value};

use super::front::Front;
use super::lambda::Outcome;
use super::sfn::Lineages;
use super::template::{ACCOUNT, REGION};

pub const STATUS_CHANGE: &str = "Step Functions Execution Status Change";

/// A function's `EventBridgeRule`, its pattern resolved.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `<FunctionLogicalId>.<EventName>` (logs and errors).
    pub name: String,
    pub function: String,
    pub pattern: Value,
}

/// Whether an EventBridge pattern (exact-value arrays, nested objects) matches an event.
pub fn matches(pattern: &Value, event: &Value) -> bool {
    let Some(fields) = pattern.as_object() else {
        return false;
    };
    fields.iter().all(|(k, p)| {
        let Some(v) = event.get(k) else {
            return false;
        };
        match p {
            Value::Object(_) => v.is_object() && matches(p, v),
            Value::Array(allowed) => match v {
                Value::Array(items) => items.iter().any(|i| allowed.contains(i)),
                Value::Object(_) => false,
                scalar => allowed.contains(scalar),
            },
            _ => false,
        }
    })
}

/// Whether a rule can ever match a Step Functions status change (its `source` and
/// `detail-type`, when it names them, allow one).
pub fn wants_status_changes(pattern: &Value) -> bool {
    let probe = json!({"source": "aws.states", "detail-type": STATUS_CHANGE});
    ["source", "detail-type"]
        .iter()
        .all(|k| match pattern.get(*k) {
            None => true,
            Some(p) => matches(&json!({ *k: p }), &probe),
        })
}

fn event_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What a status-change event says about an execution.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecutionView {
    pub execution_arn: String,
    pub state_machine_arn: String,
    pub name: String,
    pub status: String,
    pub start_ms: i64,
    pub stop_ms: Option<i64>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub cause: Option<String>,
    pub redrive_count: usize,
    pub redrive_ms: Option<i64>,
}

/// The EventBridge event AWS sends when an execution's status changes (default event bus,
/// `source: aws.states`); `input`/`output` are the JSON documents as strings, dates epoch ms.
pub fn status_change_event(x: &ExecutionView) -> Value {
    let redrivable = matches!(x.status.as_str(), "FAILED" | "TIMED_OUT" | "ABORTED");
    json!({
        "version": "0",
        "id": event_id(),
        "detail-type": STATUS_CHANGE,
        "source": "aws.states",
        "account": ACCOUNT,
        "time": tokenops::ids::now_rfc3339(),
        "region": REGION,
        "resources": [x.execution_arn],
        "detail": {
            "executionArn": x.execution_arn,
            "stateMachineArn": x.state_machine_arn,
            "name": x.name,
            "status": x.status,
            "startDate": x.start_ms,
            "stopDate": x.stop_ms,
            "input": x.input,
            "output": x.output,
            "inputDetails": {"included": x.input.is_some()},
            "outputDetails": x.output.as_ref().map(|_| json!({"included": true})),
            "error": x.error,
            "cause": x.cause,
            "redriveCount": x.redrive_count,
            "redriveDate": x.redrive_ms,
            "redriveStatus": if redrivable { "REDRIVABLE" } else { "NOT_REDRIVABLE" },
            "redriveStatusReason": if redrivable { Value::Null } else {
                json!(format!("Execution is {} and cannot be redriven", x.status))
            },
        }
    })
}

/// The event an EventBridge schedule sends.
pub fn scheduled_event(rule_arn: &str) -> Value {
    json!({
        "version": "0",
        "id": event_id(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": tokenops::ids::now_rfc3339(),
        "region": REGION,
        "resources": [rule_arn],
        "detail": {}
    })
}

fn terminal(s: &ExecutionStatus) -> bool {
    matches!(
        s,
        ExecutionStatus::Succeeded
            | ExecutionStatus::Failed
            | ExecutionStatus::TimedOut
            | ExecutionStatus::Aborted
    )
}

/// Every stopped execution of a state machine: (ARN, status).
async fn stopped(
    sfn: &aws_sdk_sfn::Client,
    state_machine: &str,
) -> Result<Vec<(String, ExecutionStatus)>, String> {
    let mut out = vec![];
    let mut token = None;
    loop {
        let page = sfn
            .list_executions()
            .state_machine_arn(state_machine)
            .max_results(1000)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| format!("{}", aws_sdk_sfn::error::DisplayErrorContext(&e)))?;
        out.extend(
            page.executions()
                .iter()
                .filter(|x| terminal(x.status()))
                .map(|x| (x.execution_arn().to_string(), x.status().clone())),
        );
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return Ok(out);
        }
    }
}

async fn view(
    sfn: &aws_sdk_sfn::Client,
    lineages: &Lineages,
    arn: &str,
) -> Result<ExecutionView, String> {
    let d = sfn
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await
        .map_err(|e| format!("{}", aws_sdk_sfn::error::DisplayErrorContext(&e)))?;
    let mut x = ExecutionView {
        execution_arn: d.execution_arn().to_string(),
        state_machine_arn: d.state_machine_arn().to_string(),
        name: d.name().unwrap_or_default().to_string(),
        status: d.status().as_str().to_string(),
        start_ms: d.start_date().to_millis().unwrap_or_default(),
        stop_ms: d.stop_date().and_then(|t| t.to_millis().ok()),
        input: d.input().map(str::to_string),
        output: d.output().map(str::to_string),
        error: d.error().map(str::to_string),
        cause: d.cause().map(str::to_string),
        redrive_count: 0,
        redrive_ms: None,
    };
    if let Some(l) = lineages.logical(arn).await {
        x.execution_arn = l.arn;
        x.name = l.name;
        x.start_ms = l.start_ms.unwrap_or(x.start_ms);
        x.redrive_count = l.redrive_count;
        x.redrive_ms = l.redrive_ms;
    }
    Ok(x)
}

/// Invokes `function` with `event` as Lambda's asynchronous invocation does: a function error is
/// retried twice. Returns whether an attempt succeeded.
pub async fn deliver(front: &Front, function: &str, event: &Value) -> bool {
    let payload = event.to_string().into_bytes();
    for attempt in 0..3u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(attempt)).await;
        }
        match front.invoke(function, payload.clone()).await {
            Some(Outcome::Ok(_)) => return true,
            Some(Outcome::FunctionError { error_type, .. }) => {
                tracing::warn!(%function, %error_type, attempt, "event delivery failed");
            }
            None => {
                tracing::warn!(%function, "event target is not a function");
                return false;
            }
        }
    }
    false
}

/// Polls the state machines for newly stopped executions and delivers their status-change
/// events to the matching rules' functions (see the module's notes).
pub async fn watch_executions(
    front: Front,
    state_machines: Vec<String>,
    rules: Vec<Rule>,
    poll: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let sfn = front.sfn.clone();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    // Executions that stopped before the emulator started are history, not news.
    for sm in &state_machines {
        match stopped(&sfn, sm).await {
            Ok(v) => seen.extend(v.into_iter().map(|(a, s)| (a, s.as_str().to_string()))),
            Err(e) => tracing::warn!(state_machine = %sm, error = %e, "ListExecutions failed"),
        }
    }
    while !*stop.borrow() {
        for sm in &state_machines {
            let list = match stopped(&sfn, sm).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(state_machine = %sm, error = %e, "ListExecutions failed");
                    continue;
                }
            };
            for (arn, status) in list {
                let key = (arn.clone(), status.as_str().to_string());
                if seen.contains(&key) {
                    continue;
                }
                let x = match view(&sfn, &front.lineages, &arn).await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(execution = %arn, error = %e, "DescribeExecution failed; next poll");
                        continue;
                    }
                };
                seen.insert(key);
                let event = status_change_event(&x);
                for rule in rules.iter().filter(|r| matches(&r.pattern, &event)) {
                    tracing::info!(rule = %rule.name, execution = %x.execution_arn, status = %x.status, redrive_count = x.redrive_count, "status change delivered");
                    let (front, function, event) =
                        (front.clone(), rule.function.clone(), event.clone());
                    tokio::spawn(async move { deliver(&front, &function, &event).await });
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Invokes `function` with a `Scheduled Event` every `period` (see the module's notes).
pub async fn run_schedule(
    front: Front,
    function: String,
    rule_arn: String,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let event = scheduled_event(&rule_arn);
        match front
            .invoke(&function, event.to_string().into_bytes())
            .await
        {
            Some(Outcome::Ok(out)) => {
                tracing::debug!(%function, result = %String::from_utf8_lossy(&out), "scheduled event")
            }
            other => {
                tracing::warn!(%function, outcome = ?other, "scheduled invocation failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_view() -> ExecutionView {
        ExecutionView {
            execution_arn: "arn:aws:states:us-east-1:123456789012:execution:sm:run_1".into(),
            state_machine_arn: "arn:aws:states:us-east-1:123456789012:stateMachine:sm".into(),
            name: "run_1".into(),
            status: "FAILED".into(),
            start_ms: 1_700_000_000_000,
            stop_ms: Some(1_700_000_001_000),
            input: Some(r#"{"run_id":"run_1"}"#.into()),
            output: None,
            error: Some("Internal".into()),
            cause: Some(r#"{"errorType":"Internal","errorMessage":"boom"}"#.into()),
            redrive_count: 0,
            redrive_ms: None,
        }
    }

    /// The deployed rule (read from infra/template.yaml) matches exactly the failed, timed-out
    /// and aborted executions of its state machine, and the failure handler's parser reads the
    /// event the emulator builds.
    #[test]
    fn the_template_rule_matches_failures_of_its_state_machine_only() {
        use super::super::template::{Physical, Resolver, Template};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
        let t = Template::load(&path, "tokenops").unwrap();
        let sm = &t.state_machines[0];
        let sm_arn = format!(
            "arn:aws:states:us-east-1:123456789012:stateMachine:{}",
            sm.name
        );
        let physical = std::collections::BTreeMap::from([(
            sm.logical_id.clone(),
            Physical::StateMachine {
                arn: sm_arn.clone(),
                name: sm.name.clone(),
            },
        )]);
        let params = Default::default();
        let r = Resolver {
            stack: "tokenops",
            physical: &physical,
            params: &params,
        };
        let (f, rule) = t
            .functions
            .iter()
            .find_map(|f| f.event_rules.first().map(|r| (f, r)))
            .expect("a function has an EventBridgeRule");
        assert_eq!(f.binary, "queue");
        let pattern = r.resolve_pattern(&rule.pattern, "rule").unwrap();
        assert!(wants_status_changes(&pattern));
        let mut x = failed_view();
        x.state_machine_arn = sm_arn.clone();
        for (status, want) in [
            ("FAILED", true),
            ("TIMED_OUT", true),
            ("ABORTED", true),
            ("SUCCEEDED", false),
        ] {
            x.status = status.into();
            assert_eq!(
                matches(&pattern, &status_change_event(&x)),
                want,
                "{status}"
            );
        }
        x.status = "FAILED".into();
        x.state_machine_arn = format!("{sm_arn}-other");
        assert!(!matches(&pattern, &status_change_event(&x)));
        // The schedule is the relay's, once a minute.
        let s = &f.schedules[0];
        assert_eq!(
            super::super::template::rate_period(&s.expression),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn the_event_is_the_one_aws_sends_and_the_handler_reads() {
        let mut x = failed_view();
        x.redrive_count = 1;
        x.redrive_ms = Some(1_700_000_002_000);
        let ev = status_change_event(&x);
        for k in [
            "version",
            "id",
            "detail-type",
            "source",
            "account",
            "time",
            "region",
            "resources",
        ] {
            assert!(ev.get(k).is_some(), "{k}");
        }
        assert_eq!(ev["resources"], json!([x.execution_arn]));
        let d = &ev["detail"];
        assert_eq!(d["startDate"], 1_700_000_000_000i64);
        assert_eq!(d["input"], r#"{"run_id":"run_1"}"#);
        assert_eq!(d["output"], Value::Null);
        assert_eq!(d["redriveCount"], 1);
        let f = tokenops_aws::lambda::failed_execution(&ev).expect("the handler reads it");
        assert_eq!(
            (f.execution.as_str(), f.error.as_str()),
            ("run_1", "Internal")
        );
        assert!(f.cause.contains("boom"));
        let sched = scheduled_event("arn:aws:events:us-east-1:123456789012:rule/r");
        assert!(tokenops_aws::lambda::is_scheduled(&sched));
        assert!(tokenops_aws::lambda::failed_execution(&sched).is_none());
    }

    #[test]
    fn patterns_match_exact_values_nested_and_in_arrays() {
        let p = json!({"source": ["aws.states"], "detail": {"status": ["FAILED", "ABORTED"]}});
        let ev = |status: Value| json!({"source": "aws.states", "detail": {"status": status}});
        assert!(matches(&p, &ev(json!("FAILED"))));
        assert!(!matches(&p, &ev(json!("SUCCEEDED"))));
        assert!(matches(&p, &ev(json!(["SUCCEEDED", "ABORTED"]))));
        assert!(
            !matches(&p, &json!({"source": "aws.states"})),
            "a missing field never matches"
        );
        assert!(!matches(&p, &ev(json!({"FAILED": 1}))));
        assert!(
            matches(&json!({}), &ev(json!("x"))),
            "an empty pattern matches all"
        );
        assert!(wants_status_changes(
            &json!({"detail-type": [STATUS_CHANGE]})
        ));
        assert!(!wants_status_changes(&json!({"source": ["aws.s3"]})));
    }

    #[test]
    fn rate_expressions_are_periods_and_cron_is_not() {
        use super::super::template::rate_period;
        assert_eq!(rate_period("rate(1 minute)"), Some(Duration::from_secs(60)));
        assert_eq!(
            rate_period("rate(5 minutes)"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            rate_period("rate(2 hours)"),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(rate_period("rate(0 minutes)"), None);
        assert_eq!(rate_period("cron(0 12 * * ? *)"), None);
    }
}
