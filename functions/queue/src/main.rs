//! Wiring only. One function supervises the run path: the SQS consumer (partial batch responses:
//! Lambda deletes what succeeded; it runs each message's Express execution synchronously and
//! hands a failed one to the failure handler), `GET /queue`, the operator's redrive, and the
//! relay schedule (which also reconciles x402 settlements whose outcome was unknown).

use lambda_runtime::{run, service_fn, Diagnostic, Error, LambdaEvent};
use serde_json::{json, Value};
use tokenops::ports::HttpSender;
use tokenops_aws::lambda;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_logging();
    let ctx = &lambda::ctx_from_env().await?;
    let orch = &lambda::step_functions_from_env()?;
    let monitor = &lambda::sqs_queue_from_env()?;
    let sender = &HttpSender::new(std::time::Duration::from_secs(10))?;
    let provider = &lambda::test_provider(ctx);
    let relay_cfg = &queue::relay::RelayConfig::default();
    let x402 = &lambda::x402_ports(ctx)?;
    run(service_fn(move |ev: LambdaEvent<Value>| async move {
        let ev = ev.payload;
        if lambda::is_apigw_v2(&ev) {
            return Ok::<_, Diagnostic>(lambda::response_to_apigw_v2(
                &queue::handle(ctx, monitor, lambda::request_from_apigw_v2(&ev)).await,
            ));
        }
        // An operator's direct invocation (IAM is the authentication): `{"tokenops_redrive": RUN}`.
        if let Some(run_id) = ev.get("tokenops_redrive").and_then(Value::as_str) {
            let run_id = tokenops::ids::parse_id("run", run_id, "tokenops_redrive")
                .map_err(|e| lambda::diagnostic(tokenops::error::TaskError::BadInput(e.detail)))?;
            let resp =
                queue::redrive::redrive_run(ctx, monitor, &run_id, queue::redrive::OPERATOR, None)
                    .await
                    .unwrap_or_else(|e| tokenops::http::ApiResponse::problem(&e));
            return Ok(json!({"status": resp.status, "body": resp.json_body()}));
        }
        if lambda::is_scheduled(&ev) {
            let report = queue::relay::tick(ctx, monitor, sender, provider, relay_cfg)
                .await
                .map_err(|e| lambda::diagnostic(e.into()))?;
            let x402 = match x402 {
                Some(ports) => Some(
                    tokenops::x402::pay::reconcile(ctx, ports, relay_cfg.x402_after_ms)
                        .await
                        .map_err(|e| lambda::diagnostic(e.into()))?,
                ),
                None => None,
            };
            return Ok(json!({"relay": report, "x402": x402}));
        }
        let failures = queue::consume(ctx, orch, sender, &lambda::sqs_deliveries(&ev)).await;
        let items: Vec<Value> = failures
            .iter()
            .map(|id| json!({"itemIdentifier": id}))
            .collect();
        Ok(json!({"batchItemFailures": items}))
    }))
    .await
}
