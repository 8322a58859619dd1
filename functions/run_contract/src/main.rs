//! Wiring only: configuration, clients and the SQS run queue once per cold start.

use lambda_http::{run, service_fn, Error, Request};
use tokenops::lambda;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_logging();
    let ctx = &lambda::ctx_from_env().await?;
    let queue = &lambda::sqs_queue_from_env().await?;
    run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(lambda::response_to_http(
            run_contract::handle(ctx, queue, lambda::request_from_http(req)).await,
        ))
    }))
    .await
}
