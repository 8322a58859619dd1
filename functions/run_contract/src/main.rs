//! Wiring only: configuration, clients and the run queue once per cold start.
//! The queue is the table-backed `StoreQueue` until the SQS adapter lands (issue 3).

use lambda_http::{run, service_fn, Error, Request};
use tokenops::{lambda, queue::StoreQueue};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_logging();
    let ctx = &lambda::ctx_from_env().await?;
    let queue = &StoreQueue::new(ctx.store.clone(), "runs", 30, 5);
    run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(lambda::response_to_http(
            run_contract::handle(ctx, queue, lambda::request_from_http(req)).await,
        ))
    }))
    .await
}
