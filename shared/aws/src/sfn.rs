//! The Step Functions adapter of the [`Orchestrator`] port: one execution per run.

use serde_json::Value;
use tokenops::ports::Orchestrator;

/// Step Functions orchestrator: executions are named by the run, so a duplicate start is
/// `ExecutionAlreadyExists`, reported as [`Started::AlreadyExists`].
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

impl Orchestrator for StepFunctions {
    async fn start(
        &self,
        name: &str,
        input: Value,
    ) -> Result<tokenops::ports::Started, tokenops::error::StoreError> {
        let res = self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(name)
            .input(input.to_string())
            .send()
            .await;
        match res {
            Ok(_) => Ok(tokenops::ports::Started::New),
            Err(e) => {
                let msg = format!("{}", aws_sdk_sfn::error::DisplayErrorContext(&e));
                if msg.contains("ExecutionAlreadyExists") {
                    Ok(tokenops::ports::Started::AlreadyExists)
                } else {
                    Err(tokenops::error::StoreError::Unavailable(msg))
                }
            }
        }
    }

    async fn redrive(
        &self,
        name: &str,
    ) -> Result<tokenops::ports::Redriven, tokenops::error::StoreError> {
        self.redrive_execution(name).await
    }
}

impl StepFunctions {
    /// Executions are named by the run: the ARN follows from the state machine's.
    fn execution_arn(&self, name: &str) -> String {
        format!(
            "{}:{name}",
            self.state_machine_arn
                .replacen(":stateMachine:", ":execution:", 1)
        )
    }

    /// `RedriveExecution`: not redrivable (running, succeeded, redriven already) is not an error.
    pub async fn redrive_execution(
        &self,
        name: &str,
    ) -> Result<tokenops::ports::Redriven, tokenops::error::StoreError> {
        use tokenops::ports::Redriven;
        let res = self
            .client
            .redrive_execution()
            .execution_arn(self.execution_arn(name))
            .send()
            .await;
        match res {
            Ok(_) => Ok(Redriven::Yes),
            Err(e) => {
                let msg = format!("{}", aws_sdk_sfn::error::DisplayErrorContext(&e));
                if msg.contains("ExecutionNotRedrivable") {
                    Ok(Redriven::NotFailed)
                } else if msg.contains("ExecutionDoesNotExist") {
                    Ok(Redriven::NotFound)
                } else {
                    Err(tokenops::error::StoreError::Unavailable(msg))
                }
            }
        }
    }
}
