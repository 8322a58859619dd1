//! Wiring only: configuration and clients once per cold start, then the handler under lambda_http.

use lambda_http::{run, service_fn, Error, Request};
use tokenops_aws::lambda;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_logging();
    let ctx = &lambda::ctx_from_env().await?;
    run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(lambda::response_to_http(
            onboarding::handle(ctx, lambda::request_from_http(req)).await,
        ))
    }))
    .await
}
