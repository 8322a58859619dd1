//! The EventBridge schedules of the template, played by the emulator ([`run_schedule`]): a
//! `Schedule` event invokes its function with a `Scheduled Event` every period — the template's
//! `rate(…)`, or `--schedule-interval` when given (tests use seconds). One tick at a time: the
//! next starts a period after the previous invocation ended (EventBridge would invoke on time,
//! overlapping a slow tick). Other EventBridge rules are not played (the emulator says so when
//! it reads the template).

use std::time::Duration;

use rand::RngCore;
use serde_json::{json, Value};

use super::front::Front;
use super::lambda::Outcome;
use super::template::{ACCOUNT, REGION};

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
