//! Wiring only: a Step Functions task that also serves its read routes (API Gateway v2 events).
//! The one function that signs: its context carries the signer (the KMS key in AWS).

use lambda_runtime::{run, service_fn, Diagnostic, Error, LambdaEvent};
use serde_json::Value;
use tokenops_aws::lambda;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_logging();
    let ctx = &lambda::signing_ctx_from_env().await?;
    run(service_fn(move |ev: LambdaEvent<Value>| async move {
        if lambda::is_apigw_v2(&ev.payload) {
            return Ok(lambda::response_to_apigw_v2(
                &attestation::handle(ctx, lambda::request_from_apigw_v2(&ev.payload)).await,
            ));
        }
        let out = attestation::run_task(ctx, ev.payload)
            .await
            .map_err(lambda::diagnostic)?;
        serde_json::to_value(out).map_err(|e| Diagnostic {
            error_type: "Internal".into(),
            error_message: e.to_string(),
        })
    }))
    .await
}
