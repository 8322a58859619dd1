//! The OpenAPI 3.1 document (`GET /openapi.json`), generated from the route table ([`ROUTES`]) and
//! the Rust types the handlers parse and return ([`OPERATIONS`]): a request body schema for every
//! operation that reads one, each status a handler answers with its body schema, problem+json
//! bodies by `$ref` to the [`ApiError`] schema, the bearer scheme (and `security: []` on public
//! operations). Schemas come from schemars — request bodies as serde *deserializes* them, responses
//! as it *serializes* them — with their definitions under `#/components/schemas/`.
//!
//! Adding a route to [`ROUTES`] without its row here fails `every_route_has_one_operation_row`.

use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use schemars::transform::{transform_subschemas, Transform};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::http::{Route, MAX_BODY_BYTES, ROUTES};
use crate::model::*;
use crate::proof::ledger::ChainReport;

/// Produces the schema of one body (usually a `$ref` into the generator's definitions).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// A non-problem response: status, what it means, its JSON body.
pub struct Response {
    pub status: u16,
    pub description: &'static str,
    pub schema: SchemaFn,
}

/// A header or query parameter besides the path's (which come from the pattern).
pub struct Param {
    pub location: &'static str,
    pub name: &'static str,
    pub required: bool,
    pub description: &'static str,
    /// A regex the value must match, if the handler parses it.
    pub pattern: Option<&'static str>,
}

/// How one route is described: keyed by its method and path pattern, like [`ROUTES`].
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    /// The OpenAPI operationId (verb-first camelCase); handlers dispatch on [`Route::operation`].
    pub operation_id: &'static str,
    pub summary: &'static str,
    /// The JSON body the handler parses, if it reads one.
    pub request: Option<SchemaFn>,
    /// Whether an `Idempotency-Key` makes a retry return the first response.
    pub idempotent: bool,
    pub params: &'static [Param],
    pub responses: &'static [Response],
    /// Statuses answered with an `application/problem+json` body ([`ApiError`]).
    pub problems: &'static [u16],
}

const fn s<T: JsonSchema>() -> SchemaFn {
    SchemaGenerator::subschema_for::<T>
}

const fn ok(status: u16, description: &'static str, schema: SchemaFn) -> Response {
    Response {
        status,
        description,
        schema,
    }
}

fn any_of<A: JsonSchema, B: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    json_schema!({"anyOf": [g.subschema_for::<A>(), g.subschema_for::<B>()]})
}

fn json_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object"})
}

/// GET of an object the caller owns.
const READ: &[u16] = &[401, 404, 503];
/// A POST that creates or changes state, authenticated.
const WRITE: &[u16] = &[400, 401, 404, 409, 413, 422, 503];
/// A POST that may be paid over x402 (402 when unpaid or the payment is refused).
const PAID: &[u16] = &[400, 401, 402, 404, 409, 413, 422, 503];
/// The x402 payment header of a paid retry.
const PAYMENT_SIGNATURE: Param = Param { location: "header", name: "PAYMENT-SIGNATURE", required: false, description: "x402 v2: base64 of the JSON PaymentPayload answering a 402's PAYMENT-REQUIRED header (deployments with x402 only)", pattern: None };

#[rustfmt::skip]
pub const OPERATIONS: &[Operation] = &[
    Operation { method: "POST", path: "/agents", operation_id: "createAgent",
        summary: "Onboard an agent: store its manifest and run the trust review",
        request: Some(s::<AgentManifest>()), idempotent: true, params: &[],
        responses: &[ok(201, "Onboarded; the claim token is shown once", s::<OnboardingResponse>())],
        problems: &[400, 409, 413, 422, 503] },
    Operation { method: "GET", path: "/agents/{agent_id}", operation_id: "getAgent",
        summary: "The caller's onboarding record and trust profile",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The agent", s::<AgentView>())], problems: READ },
    Operation { method: "GET", path: "/manifest", operation_id: "getManifest",
        summary: "The TokenOps manifest: inputs, outputs, evidence requirements, entry points",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The manifest", json_object)], problems: &[] },
    Operation { method: "GET", path: "/.well-known/tokenops.json", operation_id: "getWellKnownManifest",
        summary: "The TokenOps manifest at its well-known location",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The manifest", json_object)], problems: &[] },
    Operation { method: "GET", path: "/schemas/{object}", operation_id: "getSchema",
        summary: "The JSON Schema of one loop object",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "A JSON Schema (2020-12)", json_object)], problems: &[404] },
    Operation { method: "GET", path: "/openapi.json", operation_id: "getOpenApi",
        summary: "This OpenAPI document",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "OpenAPI 3.1", json_object)], problems: &[] },
    Operation { method: "POST", path: "/agents/{agent_id}/credentials", operation_id: "claimCredentials",
        summary: "Exchange the one-time claim token for the credential envelope (delivered once)",
        request: Some(s::<CredentialClaim>()), idempotent: false, params: &[],
        responses: &[ok(201, "The credential envelope", s::<CredentialEnvelope>())],
        problems: &[400, 404, 409, 413, 422, 503] },
    Operation { method: "POST", path: "/quotes", operation_id: "createQuote",
        summary: "Price a tool capability in credits",
        request: Some(s::<QuoteRequest>()), idempotent: true, params: &[],
        responses: &[ok(201, "The quote", s::<Quote>())], problems: WRITE },
    Operation { method: "GET", path: "/quotes/{quote_id}", operation_id: "getQuote",
        summary: "One of the caller's quotes",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The quote", s::<Quote>())], problems: READ },
    Operation { method: "POST", path: "/settlements", operation_id: "createSettlement",
        summary: "Route a quote to a settlement provider: payment request and unfunded entitlement (x402: paid in this request, funded at once)",
        request: Some(s::<SettlementRequest>()), idempotent: true, params: &[PAYMENT_SIGNATURE],
        responses: &[ok(201, "The provider route", s::<ProviderRoute>())], problems: PAID },
    Operation { method: "GET", path: "/settlements/{settlement_id}", operation_id: "getSettlement",
        summary: "One of the caller's provider routes",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The provider route", s::<ProviderRoute>())], problems: READ },
    Operation { method: "POST", path: "/providers/{provider}/confirmations", operation_id: "confirmSettlement",
        summary: "The provider's signed payment confirmation (webhook); funds the entitlement once",
        request: Some(s::<ProviderConfirmation>()), idempotent: true,
        params: &[
            Param { location: "header", name: "webhook-id", required: true, description: "Standard Webhooks message id", pattern: None },
            Param { location: "header", name: "webhook-timestamp", required: true, description: "Unix seconds", pattern: Some("^[0-9]{1,18}$") },
            Param { location: "header", name: "webhook-signature", required: true, description: "v1,<base64 HMAC-SHA256> with the provider's secret", pattern: None },
        ],
        responses: &[ok(200, "Confirmed (a redelivery returns the first confirmation)", s::<SettlementConfirmation>())],
        problems: WRITE },
    Operation { method: "GET", path: "/credit-entitlements/{credit_entitlement_id}", operation_id: "getCreditEntitlement",
        summary: "One of the caller's credit entitlements with live balances",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The entitlement", s::<CreditEntitlement>())], problems: READ },
    Operation { method: "POST", path: "/runs", operation_id: "createRun",
        summary: "Start a run: hold the quote's credits, store the contract and evidence, enqueue (without credit_entitlement_id: pay this run over x402)",
        request: Some(s::<RunRequest>()), idempotent: true, params: &[PAYMENT_SIGNATURE],
        responses: &[ok(202, "Stored and queued (paid over x402: with a PAYMENT-RESPONSE header)", s::<RunAccepted>())], problems: PAID },
    Operation { method: "GET", path: "/runs/{run_id}", operation_id: "getRun",
        summary: "The full loop payload: state, next action and a link to every object",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The run", s::<FullLoopPayload>())], problems: READ },
    Operation { method: "POST", path: "/runs/{run_id}/cancel", operation_id: "cancelRun",
        summary: "Cancel a run that has not started executing; releases the held credits",
        request: None, idempotent: true, params: &[],
        responses: &[ok(200, "Cancelled (also when it already was)", s::<FullLoopPayload>())],
        problems: WRITE },
    Operation { method: "POST", path: "/runs/{run_id}/evidence", operation_id: "supplyEvidence",
        summary: "Supply missing evidence to a run waiting on it; the run replays",
        request: Some(s::<EvidenceSupplement>()), idempotent: true, params: &[],
        responses: &[ok(202, "Replay queued", s::<ReplayPackage>())], problems: WRITE },
    Operation { method: "POST", path: "/runs/{run_id}/redrive", operation_id: "redriveRun",
        summary: "Resume a failed run from the stage that failed; takes its released hold again",
        request: None, idempotent: true, params: &[],
        responses: &[ok(202, "Redriven: the run is back in the state it failed from", s::<FullLoopPayload>())],
        problems: WRITE },
    Operation { method: "GET", path: "/queue", operation_id: "getQueue",
        summary: "Your runs waiting for dispatch, the queue's dead-letter count, the consumer's heartbeat",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The queue monitor", s::<QueueMonitor>())], problems: &[401, 503] },
    Operation { method: "GET", path: "/exceptions/{exception_id}", operation_id: "getException",
        summary: "An exception ticket (exc_…) or the replay package that resolved it (replay_…)",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The ticket or replay package", any_of::<ExceptionTicket, ReplayPackage>)],
        problems: READ },
    Operation { method: "GET", path: "/results/{result_id}", operation_id: "getResult",
        summary: "A result package (result_…) or its result contract (rcontract_…)",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The result package or contract", any_of::<ResultPackage, ResultContract>)],
        problems: READ },
    Operation { method: "GET", path: "/receipts/{receipt_id}", operation_id: "getReceipt",
        summary: "A usage receipt (usage_…) or settlement receipt (srcpt_…)",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The receipt", any_of::<UsageReceipt, SettlementReceipt>)],
        problems: READ },
    Operation { method: "POST", path: "/runs/{run_id}/callback/redeliver", operation_id: "redeliverCallback",
        summary: "Send the run's signed callback again",
        request: None, idempotent: true, params: &[],
        responses: &[
            ok(200, "Delivered", s::<CallbackRecord>()),
            ok(502, "Every attempt failed; the record lists them", s::<CallbackRecord>()),
        ],
        problems: WRITE },
    Operation { method: "GET", path: "/ledger", operation_id: "getLedger",
        summary: "The caller's hash-chained ledger (exportable; verify offline with `tokenops verify ledger`)",
        request: None, idempotent: false,
        params: &[Param { location: "query", name: "run_id", required: false, description: "Only this run's entries (another agent's run, or an id of the wrong shape, is a 404)", pattern: Some("^run_[a-z0-9_-]{1,80}$") }],
        responses: &[ok(200, "The chain", s::<LedgerView>())], problems: &[401, 404, 503] },
    Operation { method: "GET", path: "/ledger/verify", operation_id: "verifyLedger",
        summary: "Verify the caller's ledger chain",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The verification report", s::<ChainReport>())], problems: &[401, 503] },
    Operation { method: "GET", path: "/attestations/{attestation_id}", operation_id: "getAttestation",
        summary: "A run's DSSE attestation (in-toto statement)",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The attestation", s::<Attestation>())], problems: READ },
    Operation { method: "GET", path: "/keys", operation_id: "getKeys",
        summary: "The attestation verification keys",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The keys", s::<KeySet>())], problems: &[] },
];

/// An OpenAPI link: a value of one operation's response that another operation takes. The claim
/// needs the token shown once, which only this link carries (a wrong token is a 404 by design).
pub struct Link {
    pub from: &'static str,
    pub status: u16,
    pub to: &'static str,
    pub parameters: &'static [(&'static str, &'static str)],
    pub request_body: Option<(&'static str, &'static str)>,
}

pub const LINKS: &[Link] = &[Link {
    from: "createAgent",
    status: 201,
    to: "claimCredentials",
    parameters: &[("agent_id", "$response.body#/agent_id")],
    request_body: Some(("claim_token", "$response.body#/claim_token")),
}];

pub fn operation_for(route: &Route) -> Option<&'static Operation> {
    OPERATIONS
        .iter()
        .find(|o| o.method == route.method && o.path == route.pattern)
}

fn problem_description(status: u16) -> String {
    match status {
        400 => "Malformed request: the body is not JSON, or a header (Idempotency-Key, webhook-timestamp) is malformed".into(),
        401 => "No or unknown access key (`Authorization: Bearer <access key>`), or a rejected provider signature".into(),
        404 => "No such object visible to the caller (other agents' objects are 404 too)".into(),
        402 => "Payment required (x402 v2): the PAYMENT-REQUIRED header (base64 JSON PaymentRequired) says what to pay; resend with PAYMENT-SIGNATURE. A refused payment is a 402 too, its `field` naming what was wrong".into(),
        409 => "Conflicts with the object's state, or a concurrent update (retry)".into(),
        413 => format!("Request body over {MAX_BODY_BYTES} bytes"),
        422 => "A field is invalid (the problem's `field` names it), or the Idempotency-Key was used with another request".into(),
        503 => "A dependency (store, queue, provider) is unavailable; retry".into(),
        _ => "Problem".into(),
    }
}

/// Ids in paths: `<prefix>_[a-z0-9_-]{1,80}` (`ids::parse_id`); anything else is a 404.
fn path_param_schema(name: &str) -> Value {
    let id = |prefixes: &str| json!({"type": "string", "pattern": format!("^({prefixes})_[a-z0-9_-]{{1,80}}$")});
    match name {
        "agent_id" => id("agent"),
        "quote_id" => id("quote"),
        "settlement_id" => id("stl"),
        "credit_entitlement_id" => id("cred"),
        "run_id" => id("run"),
        "exception_id" => id("exc|replay"),
        "result_id" => id("result|rcontract"),
        "receipt_id" => id("usage|srcpt"),
        "attestation_id" => id("att"),
        "object" => json!({"type": "string", "enum": schemas().keys().collect::<Vec<_>>()}),
        "provider" => json!({"type": "string", "enum": crate::provider::PROVIDERS}),
        _ => json!({"type": "string"}),
    }
}

/// Replaces `true` schemas (e.g. `serde_json::Value`'s) with the equivalent `{}`.
#[derive(Clone)]
struct TrueToEmpty;

impl Transform for TrueToEmpty {
    fn transform(&mut self, schema: &mut Schema) {
        if schema.as_bool() == Some(true) {
            schema.ensure_object();
        } else {
            transform_subschemas(self, schema);
        }
    }
}

fn generator(serialize: bool) -> SchemaGenerator {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    let settings = if serialize {
        settings.for_serialize()
    } else {
        settings.for_deserialize()
    };
    settings.with_transform(TrueToEmpty).into_generator()
}

/// One operation's body as a standalone JSON Schema (2020-12, its definitions under `$defs`):
/// what an MCP tool declares as its input (`serialize` false: as the handler parses it) or output
/// (true: as it answers). The same types as the OpenAPI document's. A named type's definition is
/// the root itself (not a `$ref` to it), so an object body is `"type": "object"` at the top, as
/// MCP requires.
pub fn standalone(f: SchemaFn, serialize: bool) -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| s.meta_schema = None);
    let settings = if serialize {
        settings.for_serialize()
    } else {
        settings.for_deserialize()
    };
    let mut g = settings.with_transform(TrueToEmpty).into_generator();
    let root = schema_value(&mut g, f);
    let defs = g.take_definitions(true);
    let named = root["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| defs.get(name))
        .cloned();
    // The definition stays in `$defs` too: a recursive type refers to itself there.
    let mut root = named.unwrap_or(root);
    if let (false, Some(m)) = (defs.is_empty(), root.as_object_mut()) {
        m.insert("$defs".into(), Value::Object(defs));
    }
    root
}

/// The operation of a route by its method and path pattern.
pub fn operation(method: &str, path: &str) -> Option<&'static Operation> {
    OPERATIONS
        .iter()
        .find(|o| o.method == method && o.path == path)
}

fn schema_value(g: &mut SchemaGenerator, f: SchemaFn) -> Value {
    let mut schema = f(g);
    TrueToEmpty.transform(&mut schema);
    schema.to_value()
}

const SCHEMA_PREFIX: &str = "#/components/schemas/";

fn rename_refs(v: &mut Value, renames: &BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                match (k.as_str(), child) {
                    ("$ref", Value::String(r)) => {
                        if let Some(new) = r
                            .strip_prefix(SCHEMA_PREFIX)
                            .and_then(|name| renames.get(name))
                        {
                            *r = format!("{SCHEMA_PREFIX}{new}");
                        }
                    }
                    (_, child) => rename_refs(child, renames),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rename_refs(c, renames)),
        _ => {}
    }
}

fn operation_object(
    route: &Route,
    op: Option<&Operation>,
    req: &mut SchemaGenerator,
    resp: &mut SchemaGenerator,
) -> Value {
    let mut params: Vec<Value> = route
        .pattern
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": path_param_schema(p)}))
        .collect();
    let Some(op) = op else {
        // Not in OPERATIONS: still listed, and the completeness tests fail.
        return json!({"operationId": route.operation.as_str(), "tags": [route.stage], "parameters": params,
            "responses": {"default": {"description": "not documented"}}});
    };
    if op.idempotent {
        params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Retrying with the same key and request returns the first response (for 24 h)",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}}));
    }
    for p in op.params {
        let mut schema = json!({"type": "string"});
        if let Some(re) = p.pattern {
            schema["pattern"] = json!(re);
        }
        params.push(
            json!({"name": p.name, "in": p.location, "required": p.required,
            "description": p.description, "schema": schema}),
        );
    }
    let mut responses = Map::new();
    for r in op.responses {
        let mut o = json!({"description": r.description,
            "content": {"application/json": {"schema": schema_value(resp, r.schema)}}});
        if op.idempotent && (200..300).contains(&r.status) {
            o["headers"] = json!({"Idempotent-Replayed": {
                "description": "Present (`true`) when this is the stored response to an earlier request with the same Idempotency-Key",
                "required": false, "schema": {"type": "string", "enum": ["true"]}}});
        }
        let links: Map<String, Value> = LINKS
            .iter()
            .filter(|l| l.from == op.operation_id && l.status == r.status)
            .map(|l| {
                let mut link = json!({"operationId": l.to,
                    "parameters": l.parameters.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<Map<_, _>>()});
                if let Some((k, v)) = l.request_body {
                    link["requestBody"] = json!({ k: v });
                }
                (l.to.to_string(), link)
            })
            .collect();
        if !links.is_empty() {
            o["links"] = Value::Object(links);
        }
        responses.insert(r.status.to_string(), o);
    }
    let problem = schema_value(resp, s::<ApiError>());
    let mut problems: Vec<u16> = op.problems.to_vec();
    if route.auth && !problems.contains(&401) {
        problems.push(401);
    }
    problems.sort_unstable();
    for status in problems {
        responses.insert(
            status.to_string(),
            json!({"description": problem_description(status),
                "content": {"application/problem+json": {"schema": problem}}}),
        );
    }
    let mut o = json!({
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [route.stage],
        "x-tokenops-operation": route.operation.as_str(),
        "security": if route.auth { json!([{"accessKey": []}]) } else { json!([]) },
        "parameters": params,
        "responses": responses,
    });
    if let Some(f) = op.request {
        o["requestBody"] = json!({"required": true,
            "content": {"application/json": {"schema": schema_value(req, f)}}});
    }
    o
}

pub fn openapi(base_url: &str) -> Value {
    // Request bodies as serde reads them; responses as it writes them (`Option` fields present
    // as null, defaults required). A type whose two schemas differ gets `<Name>Input` for requests.
    let (mut req, mut resp) = (generator(false), generator(true));
    let mut paths = Map::new();
    for route in ROUTES {
        let op = operation_object(route, operation_for(route), &mut req, &mut resp);
        let entry = paths
            .entry(route.pattern.to_string())
            .or_insert_with(|| json!({}));
        entry[route.method.to_ascii_lowercase()] = op;
    }
    let mut defs = resp.take_definitions(true);
    let req_defs = req.take_definitions(true);
    let mut renames = BTreeMap::new();
    for (name, schema) in &req_defs {
        if defs.get(name).is_some_and(|d| d != schema) {
            let mut new = format!("{name}Input");
            while defs.contains_key(&new) || req_defs.contains_key(&new) {
                new.push('_');
            }
            renames.insert(name.clone(), new);
        }
    }
    for (name, mut schema) in req_defs {
        rename_refs(&mut schema, &renames);
        let name = renames.get(&name).cloned().unwrap_or(name);
        defs.entry(name).or_insert(schema);
    }
    for op in paths.values_mut().filter_map(Value::as_object_mut) {
        for o in op.values_mut() {
            if let Some(body) = o.get_mut("requestBody") {
                rename_refs(body, &renames);
            }
        }
    }
    let mut stages: Vec<&str> = ROUTES.iter().map(|r| r.stage).collect();
    stages.dedup();
    let tags: Vec<Value> = PATH
        .iter()
        .filter(|s| stages.contains(s))
        .map(|s| json!({"name": s}))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "TokenOps API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The agent-facing TokenOps loop: onboarding and trust, quote, settlement, runs and their results, receipts, callbacks, ledger and attestations. Errors are RFC 9457 problem details (application/problem+json).",
        },
        "servers": [{"url": base_url}],
        "security": [{"accessKey": []}],
        "tags": tags,
        "paths": paths,
        "components": {
            "securitySchemes": {"accessKey": {"type": "http", "scheme": "bearer",
                "description": "The access key from the credential envelope (POST /agents/{agent_id}/credentials)"}},
            "schemas": defs,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// POST operations that read no body (all others must declare one).
    const BODYLESS_POSTS: &[&str] = &["cancel_run", "redeliver_callback", "redrive_run"];

    #[test]
    fn every_route_has_one_operation_row() {
        for r in ROUTES {
            let n = OPERATIONS
                .iter()
                .filter(|o| o.method == r.method && o.path == r.pattern)
                .count();
            assert_eq!(n, 1, "{} {}: {n} rows in OPERATIONS", r.method, r.pattern);
        }
        for o in OPERATIONS {
            assert!(
                ROUTES
                    .iter()
                    .any(|r| r.method == o.method && r.pattern == o.path),
                "OPERATIONS row {} {} has no route",
                o.method,
                o.path
            );
        }
        let ids: BTreeSet<&str> = OPERATIONS.iter().map(|o| o.operation_id).collect();
        assert_eq!(ids.len(), OPERATIONS.len(), "operationIds must be unique");
        for l in LINKS {
            let from = OPERATIONS.iter().find(|o| o.operation_id == l.from);
            assert!(
                from.is_some_and(|o| o.responses.iter().any(|r| r.status == l.status)),
                "link from {} {}",
                l.from,
                l.status
            );
            assert!(ids.contains(l.to), "link to {}", l.to);
        }
    }

    fn ops(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = vec![];
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((method.to_ascii_uppercase(), path.clone(), op));
            }
        }
        out
    }

    #[test]
    fn every_operation_has_bodies_statuses_and_security() {
        let doc = openapi("http://localhost");
        let all = ops(&doc);
        assert_eq!(all.len(), ROUTES.len());
        let mut seen = BTreeSet::new();
        for (method, path, op) in all {
            let name = op["x-tokenops-operation"].as_str().unwrap_or("?");
            let at = format!("{method} {path} ({name})");
            assert!(
                seen.insert(op["operationId"].as_str().unwrap()),
                "{at}: operationId reused"
            );
            assert!(op["summary"].is_string(), "{at}: no summary");
            if method == "POST" && !BODYLESS_POSTS.contains(&name) {
                let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                assert!(schema.is_object(), "{at}: no requestBody schema");
                assert_eq!(op["requestBody"]["required"], true, "{at}");
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{at}: no success response"
            );
            for (status, r) in responses {
                let content = r["content"].as_object();
                assert!(
                    content.is_some_and(|c| !c.is_empty()),
                    "{at} {status}: no content"
                );
                for (media, m) in content.unwrap() {
                    assert!(m["schema"].is_object(), "{at} {status} {media}: no schema");
                    if media == "application/problem+json" {
                        assert_eq!(m["schema"]["$ref"], "#/components/schemas/Problem", "{at}");
                    }
                }
            }
            let route = ROUTES
                .iter()
                .find(|r| r.method == method && r.pattern == path)
                .unwrap();
            if route.auth {
                assert_eq!(op["security"], json!([{"accessKey": []}]), "{at}");
                assert!(responses.contains_key("401"), "{at}: no 401");
            } else {
                assert_eq!(op["security"], json!([]), "{at}");
            }
        }
        // Statuses the handlers answer that the old document hid behind 200.
        let status_of = |m: &str, p: &str| {
            let r = doc["paths"][p][m].as_object().unwrap()["responses"].clone();
            r.as_object()
                .unwrap()
                .keys()
                .find(|k| k.starts_with('2'))
                .cloned()
                .unwrap()
        };
        assert_eq!(status_of("post", "/agents"), "201");
        assert_eq!(status_of("post", "/agents/{agent_id}/credentials"), "201");
        assert_eq!(status_of("post", "/quotes"), "201");
        assert_eq!(status_of("post", "/settlements"), "201");
        assert_eq!(status_of("post", "/runs"), "202");
        assert_eq!(status_of("post", "/runs/{run_id}/evidence"), "202");
    }

    /// Every `$ref` resolves inside the document; no `$defs`, no `true` schemas.
    #[test]
    fn refs_resolve_and_schemas_are_objects() {
        let doc = openapi("http://localhost");
        fn walk(doc: &Value, v: &Value, at: &str, refs: &mut usize) {
            match v {
                Value::Object(m) => {
                    assert!(!m.contains_key("$defs"), "$defs at {at}");
                    if let Some(r) = m.get("$ref") {
                        let r = r.as_str().unwrap();
                        assert!(r.starts_with("#/components/"), "{at}: $ref {r}");
                        assert!(doc.pointer(&r[1..]).is_some(), "{at}: dangling $ref {r}");
                        *refs += 1;
                    }
                    for (k, c) in m {
                        walk(doc, c, &format!("{at}/{k}"), refs);
                    }
                }
                Value::Array(a) => a.iter().for_each(|c| walk(doc, c, at, refs)),
                _ => {}
            }
        }
        let mut refs = 0;
        walk(&doc, &doc, "#", &mut refs);
        assert!(
            refs > 50,
            "expected the document to reference its schemas ({refs})"
        );
        fn no_true(v: &Value, at: &str) {
            assert_ne!(v, &Value::Bool(true), "true schema at {at}");
            let Some(m) = v.as_object() else { return };
            for (k, c) in m {
                match k.as_str() {
                    "items" | "not" | "additionalProperties" | "contains" | "propertyNames" => {
                        no_true(c, &format!("{at}/{k}"))
                    }
                    "anyOf" | "oneOf" | "allOf" | "prefixItems" => c
                        .as_array()
                        .unwrap()
                        .iter()
                        .for_each(|s| no_true(s, &format!("{at}/{k}"))),
                    "properties" | "patternProperties" => c
                        .as_object()
                        .unwrap()
                        .iter()
                        .for_each(|(p, s)| no_true(s, &format!("{at}/{k}/{p}"))),
                    _ => {}
                }
            }
        }
        for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
            no_true(schema, name);
        }
        for (m, p, op) in ops(&doc) {
            for r in op["responses"].as_object().unwrap().values() {
                for c in r["content"].as_object().unwrap().values() {
                    no_true(&c["schema"], &format!("{m} {p}"));
                }
            }
        }
        // Request and response schemas of one type that differ are both present.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        assert!(schemas.contains_key("EvidenceBundle"));
        assert!(schemas.contains_key("RunRequest"));
    }

    /// The problem schema is the serialized ApiError: every member it writes is described and
    /// every required member is always written.
    #[test]
    fn problem_schema_matches_api_error() {
        let doc = openapi("http://localhost");
        let p = &doc["components"]["schemas"]["Problem"];
        let props = p["properties"].as_object().unwrap();
        let required: Vec<&str> = p["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for e in [ApiError::invalid("x", "bad"), ApiError::internal("boom")] {
            let v = serde_json::to_value(&e).unwrap();
            let members = v.as_object().unwrap();
            for k in members.keys() {
                assert!(
                    props.contains_key(k),
                    "problem member {k} is not in the schema"
                );
            }
            for k in &required {
                assert!(
                    members.contains_key(*k),
                    "required member {k} missing from {v}"
                );
            }
        }
        assert!(required.contains(&"type") && required.contains(&"title"));
    }

    #[test]
    fn request_bodies_use_the_deserialize_contract() {
        let doc = openapi("http://localhost");
        let body = &doc["paths"]["/settlements"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["$ref"];
        let name = body.as_str().unwrap().rsplit('/').next().unwrap();
        let schema = &doc["components"]["schemas"][name];
        // `credits` has a serde default: optional in a request.
        let required = schema["required"].as_array().unwrap();
        assert!(!required.contains(&json!("credits")), "{schema}");
        assert_eq!(schema["additionalProperties"], false, "deny_unknown_fields");
    }
}
