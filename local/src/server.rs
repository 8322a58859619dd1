//! The local HTTP API: every request goes to the stage function that serves its route, exactly
//! as API Gateway routes to the Lambda functions; `/mcp` serves the MCP tools
//! ([`mcp_service`]: stateless streamable HTTP; the tools call the handlers in process with the
//! request's bearer key).

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::response::Response;
use mcp::api::{Api, Reply, Request as ToolRequest, Unreachable};
use tokenops::error::ApiError;
use tokenops::http::{match_route, ApiRequest, ApiResponse, MAX_BODY_BYTES};
use tokenops::ports::HttpSender;
use tokenops::provider::TestProvider;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the API serves with: the handlers' context and the run queue. Spelled out rather than
/// taken from `runtime` (which starts this server), so the two modules do not import each other.
#[derive(Clone)]
pub struct App {
    pub ctx: tokenops::config::Ctx<tokenops_aws::DynamoStore>,
    pub queue: tokenops::queue::StoreQueue<tokenops_aws::DynamoStore>,
    pub sender: HttpSender,
    pub provider: TestProvider,
    /// The x402 facilitator and chain clients, when x402 is configured.
    pub x402: Option<tokenops::x402::pay::HttpX402>,
}

/// Calls the stage function that owns the route.
pub async fn dispatch(app: &App, req: ApiRequest) -> ApiResponse {
    let stage = match match_route(&req.method, &req.path) {
        Ok(Some((route, _))) => route.stage,
        // Unknown paths and wrong methods: any function's edge answers with the right problem.
        _ => "onboarding",
    };
    let ctx = &app.ctx;
    match stage {
        "onboarding" => onboarding::handle(ctx, req).await,
        "trust" => trust::handle(ctx, req).await,
        "quote" => quote::handle(ctx, req).await,
        "provider_route" => {
            provider_route::handle(ctx, &app.provider, app.x402.as_ref(), req).await
        }
        "credit_entitlement" => credit_entitlement::handle(ctx, req).await,
        "run_contract" => run_contract::handle(ctx, &app.queue, app.x402.as_ref(), req).await,
        "queue" => queue::handle(ctx, &app.queue, req).await,
        "tokenops_execution" => tokenops_execution::handle(ctx, req).await,
        "result_contract" => result_contract::handle(ctx, req).await,
        "usage_receipt" => usage_receipt::handle(ctx, req).await,
        "callback" => callback::handle(ctx, &app.sender, req).await,
        "ledger" => ledger::handle(ctx, req).await,
        "attestation" => attestation::handle(ctx, req).await,
        other => ApiResponse::problem(&ApiError::internal(format!(
            "no function for stage {other}"
        ))),
    }
}

async fn handler(State(app): State<App>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let started = std::time::Instant::now();
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let api = match to_bytes(body, MAX_BODY_BYTES + 1).await {
        Ok(bytes) => {
            let req = ApiRequest {
                source_ip: peer,
                ..ApiRequest::from_http(&parts, bytes.to_vec())
            };
            dispatch(&app, req).await
        }
        Err(_) => ApiResponse::problem(&ApiError::too_large(MAX_BODY_BYTES)),
    };
    // Never log bodies, keys or query strings: the path and status are enough to trace a call.
    tracing::info!(method = %parts.method, path = %parts.uri.path(), status = api.status, ms = started.elapsed().as_millis() as u64, "request");
    let mut b = Response::builder().status(api.status);
    for (k, v) in &api.headers {
        b = b.header(k, v);
    }
    b.body(Body::from(api.body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

pub fn spawn(listener: TcpListener, app: App, mut stop: watch::Receiver<bool>) {
    let router = axum::Router::new()
        .nest_service("/mcp", mcp_service(app.clone()))
        .fallback(handler)
        .with_state(app)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES + 1));
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let _ = axum::serve(listener, service)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
}

/// The API as the local server's own handlers: a tool call is dispatched like an HTTP request.
#[derive(Clone)]
pub struct InProcessApi {
    app: App,
}

impl Api for InProcessApi {
    async fn send(&self, req: &ToolRequest, key: Option<&str>) -> Result<Reply, Unreachable> {
        let unreachable = |reason: String| Unreachable {
            base: "the local server".into(),
            reason,
        };
        let mut b = axum::http::Request::builder()
            .method(req.method)
            .uri(&req.path);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        if let Some(k) = &req.idempotency_key {
            b = b.header("idempotency-key", k);
        }
        if let Some(p) = &req.payment_signature {
            b = b.header(tokenops::x402::HEADER_SIGNATURE, p);
        }
        let body = match &req.body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                v.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        let (parts, ()) = b
            .body(())
            .map_err(|e| unreachable(e.to_string()))?
            .into_parts();
        let api = tokenops::http::ApiRequest {
            source_ip: Some("127.0.0.1".into()),
            ..tokenops::http::ApiRequest::from_http(&parts, body)
        };
        // On the heap: the handlers' future (an x402-paid run verifies and settles in it) on top
        // of the MCP service's overflowed a worker's stack in debug builds.
        let resp = Box::pin(dispatch(&self.app, api)).await;
        let body = if resp.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&resp.body).map_err(|e| unreachable(e.to_string()))?
        };
        let header = |name| resp.header(name).map(str::to_string);
        Ok(Reply {
            status: resp.status,
            payment_required: header(tokenops::x402::HEADER_REQUIRED),
            payment_response: header(tokenops::x402::HEADER_RESPONSE),
            body,
        })
    }
}

/// `/mcp`: the tools over stateless streamable HTTP, calling the handlers in process; loopback
/// hosts only (the server listens on 127.0.0.1).
fn mcp_service(app: App) -> mcp::http::Service<InProcessApi> {
    let hosts = ["127.0.0.1", "localhost", "::1"].map(String::from).to_vec();
    mcp::http::service(InProcessApi { app }, hosts, true)
}
