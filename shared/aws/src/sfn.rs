//! The Step Functions adapter of the [`Orchestrator`] port: the run path is an **Express**
//! workflow, started synchronously (`StartSyncExecution`) by the queue consumer, which acts on
//! how it ended (a failed execution goes to the failure handler).
//!
//! Why Express: a Standard workflow bills every state transition ($25 per million), about
//! $225 per million runs for the path's nine; Express bills requests and duration, about $1.
//! What Express does not give, and what stands in for it:
//! * **No exactly-once start by name**: a redelivered message may start a second execution of a
//!   run. Every stage is idempotent (a stage that already succeeded answers its object without a
//!   second effect), so the second execution changes nothing.
//! * **No `RedriveExecution`**: a redrive starts the path again ([`Redriven::StartAgain`]); the
//!   stages that succeeded are skipped the same way.
//! * **No EventBridge status-change events**: the consumer sees the outcome in the response.
//! * **Five minutes at most**: the ASL's retry budget fits inside it
//!   ([`tokenops::backoff::Backoff::TRANSIENT`]); a timed-out execution ends `States.Timeout`.

use aws_sdk_sfn::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_sfn::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sfn::error::BoxError;
use aws_sdk_sfn::types::SyncExecutionStatus;
use serde_json::Value;
use tokenops::error::StoreError;
use tokenops::ports::{Ended, Orchestrator, Redriven, Started};

#[derive(Clone)]
pub struct StepFunctions {
    client: aws_sdk_sfn::Client,
    state_machine_arn: String,
}

impl StepFunctions {
    pub fn new(client: aws_sdk_sfn::Client, state_machine_arn: &str) -> Self {
        StepFunctions {
            client,
            state_machine_arn: state_machine_arn.to_string(),
        }
    }
}

/// A Step Functions client. `StartSyncExecution` is served on `sync-states.<region>`: the SDK
/// puts `sync-` before the endpoint's host, which breaks an endpoint override (`sync-127.0.0.1`,
/// `sync-localhost`), so for any host but AWS's own the prefix is taken off again.
pub fn client(config: aws_sdk_sfn::config::Builder) -> aws_sdk_sfn::Client {
    aws_sdk_sfn::Client::from_conf(config.interceptor(NoHostPrefix).build())
}

/// `http://sync-127.0.0.1:4566/` → `http://127.0.0.1:4566/`; AWS's endpoints are kept.
fn without_sync_prefix(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://sync-")?;
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    if host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn") {
        return None;
    }
    Some(format!("{scheme}://{rest}"))
}

#[derive(Debug)]
struct NoHostPrefix;

impl Intercept for NoHostPrefix {
    fn name(&self) -> &'static str {
        "NoHostPrefix"
    }

    // Before signing, so the signed host is the one the request goes to.
    fn modify_before_signing(
        &self,
        ctx: &mut BeforeTransmitInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = ctx.request_mut();
        if let Some(uri) = without_sync_prefix(req.uri()) {
            req.set_uri(uri)?;
        }
        Ok(())
    }
}

impl Orchestrator for StepFunctions {
    /// Runs the execution to its end (up to Express's five minutes) and reports how it ended.
    async fn start(&self, name: &str, input: Value) -> Result<Started, StoreError> {
        let out = self
            .client
            .start_sync_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(name)
            .input(input.to_string())
            .send()
            .await
            .map_err(|e| {
                let msg = format!("{}", aws_sdk_sfn::error::DisplayErrorContext(&e));
                StoreError::Unavailable(msg)
            })?;
        let ended = match out.status() {
            SyncExecutionStatus::Succeeded => Ended::Succeeded,
            SyncExecutionStatus::TimedOut => Ended::Failed {
                error: out.error().unwrap_or("States.Timeout").to_string(),
                cause: out
                    .cause()
                    .unwrap_or("the execution ran past Express's five minutes")
                    .to_string(),
            },
            other => Ended::Failed {
                error: out
                    .error()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("States.{}", other.as_str())),
                cause: out.cause().unwrap_or_default().to_string(),
            },
        };
        Ok(Started::Ended(ended))
    }

    async fn redrive(&self, _name: &str) -> Result<Redriven, StoreError> {
        Ok(Redriven::StartAgain)
    }
}

#[cfg(test)]
mod tests {
    use super::without_sync_prefix;

    #[test]
    fn the_sync_prefix_comes_off_an_override_and_stays_on_aws() {
        assert_eq!(
            without_sync_prefix("http://sync-127.0.0.1:4566/").as_deref(),
            Some("http://127.0.0.1:4566/")
        );
        assert_eq!(
            without_sync_prefix("http://sync-localhost:5000").as_deref(),
            Some("http://localhost:5000")
        );
        assert_eq!(
            without_sync_prefix("https://sync-states.us-east-1.amazonaws.com/"),
            None
        );
        assert_eq!(without_sync_prefix("http://127.0.0.1:4566/"), None);
    }
}
