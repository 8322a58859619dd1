//! Wiring only: the SQS consumer (partial batch responses: Lambda deletes what succeeded) that
//! also serves `GET /queue` from SQS attributes and the table.

use lambda_runtime::{run, service_fn, Diagnostic, Error, LambdaEvent};
use serde_json::{json, Value};
use tokenops::lambda::{self, StepFunctions};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_logging();
    let ctx = &lambda::ctx_from_env().await?;
    let orch = &StepFunctions::from_env().await?;
    let monitor = &lambda::sqs_queue_from_env().await?;
    run(service_fn(move |ev: LambdaEvent<Value>| async move {
        if lambda::is_apigw_v2(&ev.payload) {
            return Ok::<_, Diagnostic>(lambda::response_to_apigw_v2(
                &queue::handle(ctx, monitor, lambda::request_from_apigw_v2(&ev.payload)).await,
            ));
        }
        let failures = queue::consume(ctx, orch, &lambda::sqs_deliveries(&ev.payload)).await;
        let items: Vec<Value> = failures
            .iter()
            .map(|id| json!({"itemIdentifier": id}))
            .collect();
        Ok(json!({"batchItemFailures": items}))
    }))
    .await
}
