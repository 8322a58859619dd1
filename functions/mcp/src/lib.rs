//! The MCP door: TokenOps as Model Context Protocol tools (the official Rust SDK, `rmcp`), so an
//! LLM agent drives the whole loop — onboard, quote, fund, run, evidence, verify — without
//! hand-written HTTP. Every tool is one call of the API (or, for the offline checks, the proof
//! code `tokenops verify` runs): no stage is implemented twice, and an agent sees exactly what
//! the API shows it. API errors come back as tool errors (`isError`, the problem+json as
//! structured content); the session goes on.
//!
//! The access key: over streamable HTTP, the request's bearer token (`Authorization: Bearer`),
//! exactly as on the API; over stdio, the key given at start (`tokenops mcp --key`), or the one
//! `claim_credentials` returns when the agent onboards through the tools.

pub mod api;
pub mod http;
pub mod payment;
pub mod tools;
pub mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation,
    InitializeRequestParams, InitializeResult, JsonObject, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
    ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig, SubscribeRequestParams,
    SubscriptionFilter, Tool, ToolAnnotations, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};
use tokenops::error::ApiError;
use tokenops::proof::verify;
use tokio::task::AbortHandle;

use api::{Api, Reply, Request};
use tools::{BadArgument, Plan, TOOLS};

/// What a caller is told when the API cannot be reached.
const UNREACHABLE: &str =
    "the TokenOps API did not answer; call again (the same arguments carry the same idempotency key, so a retry never acts twice)";

/// Resource URIs.
pub const MANIFEST: &str = "tokenops://manifest";
pub const OPENAPI: &str = "tokenops://openapi";
pub const SCHEMAS: &str = "tokenops://schemas/";
pub const RUNS: &str = "tokenops://runs/";

/// How often a subscribed run is read where subscriptions are served: a run's stages take tens of
/// milliseconds each, and a model needs no finer news than this.
pub const RUN_UPDATE_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct TokenOpsMcp<A: Api> {
    api: A,
    key: Arc<RwLock<Option<String>>>,
    /// How often a subscribed run is read; `None`: no subscriptions (a transport that cannot hold
    /// a stream open, as the Lambda's buffered answers cannot).
    run_updates: Option<Duration>,
    /// The 2025 protocol's subscriptions of this session: the watch of each URI.
    subscriptions: Arc<Mutex<HashMap<String, AbortHandle>>>,
}

impl<A: Api> TokenOpsMcp<A> {
    pub fn new(api: A, key: Option<String>) -> Self {
        TokenOpsMcp {
            api,
            key: Arc::new(RwLock::new(key)),
            run_updates: None,
            subscriptions: Arc::default(),
        }
    }

    /// Serves subscriptions to `tokenops://runs/{run_id}`, reading each subscribed run `every`.
    pub fn with_run_updates(mut self, every: Duration) -> Self {
        self.run_updates = Some(every);
        self
    }

    fn session_key(&self) -> Option<String> {
        self.key.read().map(|k| k.clone()).unwrap_or_default()
    }

    /// The tool list: descriptions for a model, input schemas, and the API's own schemas as
    /// output schemas. Built once per process: generating the schemas is the costly part, and a
    /// stateless HTTP server is asked for the list again by every new client.
    pub fn tools() -> Vec<Tool> {
        static TOOL_LIST: OnceLock<Vec<Tool>> = OnceLock::new();
        TOOL_LIST.get_or_init(Self::build_tools).clone()
    }

    fn build_tools() -> Vec<Tool> {
        TOOLS
            .iter()
            .map(|t| {
                let mut tool =
                    Tool::new(t.name, t.description, Arc::new(as_object(t.input_schema())))
                        .annotate(
                            ToolAnnotations::new()
                                .read_only(t.read_only)
                                .destructive(false)
                                .open_world(false),
                        );
                if let Some(out) = t.output_schema() {
                    tool = tool.with_raw_output_schema(Arc::new(as_object(out)));
                }
                tool
            })
            .collect()
    }

    /// The resources: the manifest, the OpenAPI document, each loop object's JSON Schema.
    pub fn resources() -> Vec<Resource> {
        let mut out = vec![
            Resource::new(MANIFEST, "manifest")
                .with_description("The TokenOps manifest: what it sells, its inputs, outputs, evidence requirements and entry points.")
                .with_mime_type("application/json"),
            Resource::new(OPENAPI, "openapi")
                .with_description("The OpenAPI 3.1 document of the HTTP API the tools call.")
                .with_mime_type("application/json"),
        ];
        for name in schema_names() {
            out.push(
                Resource::new(format!("{SCHEMAS}{name}"), format!("schema {name}"))
                    .with_description(format!("The JSON Schema of the {name} object."))
                    .with_mime_type("application/schema+json"),
            );
        }
        out
    }

    /// What a resource URI reads: an API path, and whether it needs the caller's key.
    fn resource_path(uri: &str) -> Option<(String, bool)> {
        if uri == MANIFEST {
            return Some(("/manifest".into(), false));
        }
        if uri == OPENAPI {
            return Some(("/openapi.json".into(), false));
        }
        if let Some(name) = uri.strip_prefix(SCHEMAS) {
            return schema_names()
                .contains(&name)
                .then(|| (format!("/schemas/{name}"), false));
        }
        watch::run_path(uri).map(|path| (path, true))
    }

    /// Reads a resource; an unknown URI or an API refusal (another agent's run) is
    /// `resource_not_found` with the problem as data.
    pub async fn read(
        &self,
        uri: &str,
        bearer: Option<&str>,
    ) -> Result<ReadResourceResult, ErrorData> {
        let Some((path, keyed)) = Self::resource_path(uri) else {
            return Err(ErrorData::resource_not_found(
                format!("no resource {uri}"),
                None,
            ));
        };
        let key = if keyed {
            bearer.map(str::to_string).or_else(|| self.session_key())
        } else {
            None
        };
        let reply = self
            .api
            .send(&Request::get(path), key.as_deref())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "API unreachable");
                ErrorData::internal_error(UNREACHABLE, None)
            })?;
        if reply.status != 200 {
            let detail = reply.body["detail"]
                .as_str()
                .unwrap_or("refused")
                .to_string();
            return Err(ErrorData::resource_not_found(
                format!("{uri}: {detail}"),
                Some(reply.body),
            ));
        }
        Ok(ReadResourceResult::new(vec![ResourceContents::text(
            reply.body.to_string(),
            uri,
        )
        .with_mime_type("application/json")]))
    }

    /// One tool call → its result; never a protocol error for what the caller can fix. `bearer`:
    /// the HTTP request's access key, which takes the place of the session's; `meta`: the call's
    /// `_meta`, where an x402 client puts its payment.
    pub async fn call(
        &self,
        name: &str,
        args: &Map<String, Value>,
        bearer: Option<&str>,
        meta: &JsonObject,
    ) -> Option<CallToolResult> {
        let key = bearer.map(str::to_string).or_else(|| self.session_key());
        let key = key.as_deref();
        let planned = tools::plan(name, args)?.and_then(|plan| match plan {
            Plan::Call(mut req) => {
                req.payment_signature = payment::signature(meta)?;
                Ok(Plan::Call(req))
            }
            other => Ok(other),
        });
        let plan = match planned {
            Ok(p) => p,
            Err(bad) => return Some(bad_argument(&bad)),
        };
        Some(match plan {
            Plan::Call(req) => match self.send(&req, key).await {
                Ok(reply) => {
                    if name == "claim_credentials" && reply.status < 300 {
                        if let Some(k) = reply.body["access_key"].as_str() {
                            if let Ok(mut slot) = self.key.write() {
                                *slot = Some(k.to_string());
                            }
                        }
                    }
                    from_reply(reply, name)
                }
                Err(e) => e,
            },
            Plan::VerifyAttestation { attestation_id } => {
                self.verify_attestation(&attestation_id, key).await
            }
            Plan::VerifyLedger { run_id } => self.verify_ledger(run_id.as_deref(), key).await,
        })
    }

    async fn send(&self, req: &Request, key: Option<&str>) -> Result<Reply, CallToolResult> {
        // The cause (addresses, transport errors) goes to the log, not to the caller.
        self.api.send(req, key).await.map_err(|e| {
            tracing::warn!(error = %e, "API unreachable");
            CallToolResult::structured_error(as_problem(&ApiError::unavailable(UNREACHABLE)))
        })
    }

    async fn get_ok(&self, path: String, key: Option<&str>) -> Result<Value, CallToolResult> {
        let reply = self.send(&Request::get(path), key).await?;
        if reply.status == 200 {
            Ok(reply.body)
        } else {
            Err(from_reply(reply, "get"))
        }
    }

    async fn verify_attestation(&self, id: &str, key: Option<&str>) -> CallToolResult {
        let fetched = async {
            let att = self.get_ok(format!("/attestations/{id}"), key).await?;
            let keys = self.get_ok("/keys".into(), None).await?;
            Ok::<_, CallToolResult>((att, keys))
        };
        let (att, keys) = match fetched.await {
            Ok(v) => v,
            Err(e) => return e,
        };
        match verify::attestation(att, keys) {
            Ok(statement) => CallToolResult::structured(
                json!({"valid": true, "attestation_id": id, "statement": statement}),
            ),
            Err(r) => CallToolResult::structured(
                json!({"valid": false, "attestation_id": id, "reason": r.0}),
            ),
        }
    }

    async fn verify_ledger(&self, run_id: Option<&str>, key: Option<&str>) -> CallToolResult {
        let path = match run_id {
            Some(r) => format!("/ledger?run_id={r}"),
            None => "/ledger".into(),
        };
        let export = match self.get_ok(path, key).await {
            Ok(v) => v,
            Err(e) => return e,
        };
        match verify::ledger_export(export) {
            Ok(report) => CallToolResult::structured(json!(report)),
            Err(r) => CallToolResult::structured(json!({"valid": false, "reason": r.0})),
        }
    }
}

fn as_object(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    }
}

/// A problem as the API writes it (RFC 9457, the same `ApiError`).
fn as_problem(e: &ApiError) -> Value {
    serde_json::to_value(e).unwrap_or_default()
}

fn bad_argument(bad: &BadArgument) -> CallToolResult {
    CallToolResult::structured_error(as_problem(&ApiError::invalid(&bad.field, &bad.detail)))
}

/// The loop objects that have a schema resource (their names, computed once).
fn schema_names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| tokenops::model::schemas().into_keys().collect())
}

/// A 2xx answer is the tool's structured result (with the settlement in `_meta` when it was
/// paid); a 402 the x402 payment-required result; anything else a tool error carrying the API's
/// problem+json.
fn from_reply(reply: Reply, tool: &str) -> CallToolResult {
    if let Some(pay) = payment::required(&reply, tool) {
        return pay;
    }
    if (200..300).contains(&reply.status) {
        let settled = payment::settlement(&reply);
        return CallToolResult::structured(reply.body).with_meta(settled);
    }
    CallToolResult::structured_error(reply.body)
}

impl<A: Api> ServerHandler for TokenOpsMcp<A> {
    fn get_info(&self) -> ServerConfig {
        let mut capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .build();
        if let Some(r) = capabilities.resources.as_mut() {
            r.subscribe = self.run_updates.map(|_| true);
        }
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("tokenops", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "TokenOps sells one paid unit of agent work and proves it. Order: onboard → \
                 claim_credentials → get_quote → fund → submit_run → get_run until state is \
                 callback_delivered (supply_evidence if it asks) → verify_attestation.",
            )
    }

    /// The 2025 handshake over HTTP: no `subscribe` (a stateless server keeps no stream open after
    /// its answer to carry updates); the 2026-07-28 `subscriptions/listen` has its own stream.
    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        let mut result = self.negotiate_initialize(&request)?;
        if over_http(&context) {
            if let Some(r) = result.capabilities.resources.as_mut() {
                r.subscribe = None;
            }
        }
        Ok(result)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(Self::tools()))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(Self::resources()))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(format!("{RUNS}{{run_id}}"), "run")
                .with_description(
                    "One of the caller's runs: its full loop payload (state, next_action, every \
                     object's id, URL and sha256), as get_run returns it.",
                )
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.read(&request.uri, bearer(&context).as_deref())
            .await
            .map(Into::into)
    }

    /// Run resources only, and only where the transport can carry the updates.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        self.run_updates?;
        let runs = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|uri| watch::run_path(uri).is_some())
            .cloned()
            .collect::<Vec<_>>();
        let mut accepted = SubscriptionFilter::new();
        accepted.resource_subscriptions = Some(runs);
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let Some(every) = self.run_updates else {
            return Ok(());
        };
        let uris = context
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default();
        let key = bearer(context.request_context()).or_else(|| self.session_key());
        let sink = context.sink();
        let notify = |uri: String| async move {
            sink.notify_resource_updated(uri)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::select! {
            () = context.cancelled() => {}
            () = watch::runs(&self.api, key.as_deref(), uris, every, notify) => {}
        }
        Ok(())
    }

    /// The 2025 protocol's subscription, over stdio only: a stateless HTTP server has no stream
    /// left open after its answer to carry the updates (`subscriptions/listen` has one).
    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let (Some(every), false) = (self.run_updates, over_http(&context)) else {
            return Err(ErrorData::invalid_request(
                "resources/subscribe needs a stream this connection does not keep; use \
                 subscriptions/listen (protocol 2026-07-28), or read the resource again",
                None,
            ));
        };
        if watch::run_path(&request.uri).is_none() {
            return Err(ErrorData::invalid_params(
                format!(
                    "only runs can be subscribed ({RUNS}{{run_id}}); {} does not change",
                    request.uri
                ),
                None,
            ));
        }
        let key = self.session_key();
        let (api, peer, uri) = (self.api.clone(), context.peer.clone(), request.uri.clone());
        let task = tokio::spawn(async move {
            let notify = |uri: String| {
                let peer = peer.clone();
                async move {
                    peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            watch::runs(&api, key.as_deref(), vec![uri], every, notify).await;
        });
        if let Ok(mut subs) = self.subscriptions.lock() {
            if let Some(old) = subs.insert(request.uri, task.abort_handle()) {
                old.abort();
            }
        }
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Some(task) = self
            .subscriptions
            .lock()
            .ok()
            .and_then(|mut subs| subs.remove(&request.uri))
        {
            task.abort();
        }
        Ok(())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let meta = &context.meta.0 .0;
        match self
            .call(&request.name, &args, bearer(&context).as_deref(), meta)
            .await
        {
            Some(result) => Ok(result.into()),
            None => Err(ErrorData::invalid_params(
                format!("no tool named {}", request.name),
                None,
            )),
        }
    }
}

/// The call came over HTTP (streamable HTTP hands over the request's parts; stdio has none).
fn over_http(context: &RequestContext<RoleServer>) -> bool {
    context.extensions.get::<::http::request::Parts>().is_some()
}

/// The bearer key of the HTTP request behind this call (streamable HTTP hands over the request's
/// parts; stdio has none).
fn bearer(context: &RequestContext<RoleServer>) -> Option<String> {
    context
        .extensions
        .get::<::http::request::Parts>()
        .and_then(|p| p.headers.get("authorization"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| key.trim().to_string())
        })
}
