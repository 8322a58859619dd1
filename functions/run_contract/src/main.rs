//! Wiring only: configuration, clients, the SQS run queue and the x402 clients once per cold start.

use lambda_http::{run, service_fn, Error, Request};
use tokenops_aws::lambda;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_logging();
    let ctx = &lambda::ctx_from_env().await?;
    let queue = &lambda::sqs_queue_from_env()?;
    let x402 = &lambda::x402_ports(ctx)?;
    run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(lambda::response_to_http(
            run_contract::handle(ctx, queue, x402.as_ref(), lambda::request_from_http(req)).await,
        ))
    }))
    .await
}
