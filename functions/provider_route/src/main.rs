//! Wiring only: configuration, clients and the settlement provider once per cold start.

use lambda_http::{run, service_fn, Error, Request};
use tokenops_aws::lambda;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_logging();
    let ctx = &lambda::ctx_from_env().await?;
    let provider = &lambda::test_provider(ctx);
    let x402 = &lambda::x402_ports(ctx)?;
    run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(lambda::response_to_http(
            provider_route::handle(ctx, provider, x402.as_ref(), lambda::request_from_http(req))
                .await,
        ))
    }))
    .await
}
