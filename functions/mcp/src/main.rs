//! Wiring only: the MCP tools as stateless streamable HTTP behind the HTTP API's `/mcp` route.
//! The tools call the API at `PUBLIC_BASE_URL` with the request's bearer key, so this function
//! needs no access to the table or any other resource.

use http_body_util::BodyExt;
use lambda_http::{run, service_fn, Body, Error, Request, Response};
use tokenops_aws::lambda;
use tower_service::Service;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_logging();
    let base = lambda::public_base_url()?;
    let hosts = mcp::http::host_of(&base).into_iter().collect();
    // Buffered answers (API Gateway + lambda_http): no run subscriptions here.
    let svc = mcp::http::service(mcp::api::HttpApi::new(&base)?, hosts, false);
    run(service_fn(move |req: Request| {
        let mut svc = svc.clone();
        async move {
            let resp = svc.call(req).await?;
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok::<_, Error>(Response::from_parts(parts, Body::from(bytes.to_vec())))
        }
    }))
    .await
}
