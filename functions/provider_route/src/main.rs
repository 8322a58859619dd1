//! Wiring only: configuration, clients and the settlement provider once per cold start.

use lambda_http::{run, service_fn, Error, Request};
use tokenops::{lambda, provider::TestProvider};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_logging();
    let ctx = &lambda::ctx_from_env().await?;
    let secret = ctx
        .config
        .provider_secrets
        .get(tokenops::provider::TEST_PROVIDER)
        .cloned()
        .unwrap_or_default();
    let provider = &TestProvider::new(
        &ctx.config.public_base_url,
        &secret,
        std::time::Duration::ZERO,
    )
    .confirm_inline();
    run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(lambda::response_to_http(
            provider_route::handle(ctx, provider, lambda::request_from_http(req)).await,
        ))
    }))
    .await
}
