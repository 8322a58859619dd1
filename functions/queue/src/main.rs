//! Wiring only: the SQS consumer (partial batch responses) that also serves `GET /queue`.
//! Deleting handled messages is Lambda's job here (ReportBatchItemFailures), so the queue port
//! is only used for the monitor.

use lambda_runtime::{run, service_fn, Diagnostic, Error, LambdaEvent};
use serde_json::{json, Value};
use tokenops::lambda::{self, StepFunctions};
use tokenops::queue::StoreQueue;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_logging();
    let ctx = &lambda::ctx_from_env().await?;
    let orch = &StepFunctions::from_env().await?;
    let monitor = &StoreQueue::new(ctx.store.clone(), "runs", 30, 5);
    run(service_fn(move |ev: LambdaEvent<Value>| async move {
        if lambda::is_apigw_v2(&ev.payload) {
            return Ok::<_, Diagnostic>(lambda::response_to_apigw_v2(
                &queue::handle(ctx, monitor, lambda::request_from_apigw_v2(&ev.payload)).await,
            ));
        }
        let mut failures = Vec::new();
        for d in lambda::sqs_deliveries(&ev.payload) {
            match d {
                Ok(d) => {
                    if let Err(e) = queue::dispatch(ctx, orch, &d).await {
                        tracing::warn!(message_id = %d.message_id, error = %e, "dispatch failed");
                        failures.push(json!({"itemIdentifier": d.message_id}));
                    }
                }
                Err(id) => failures.push(json!({"itemIdentifier": id})),
            }
        }
        Ok(json!({"batchItemFailures": failures}))
    }))
    .await
}
