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
    /// For an agent: what it does, when to call it, what comes back.
    pub description: &'static str,
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

/// A JSON object of any members (said explicitly: generators read a bare `"type": "object"`
/// as an object with no members).
fn json_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "additionalProperties": {}})
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
        description: "Call this first, once per agent. Send the agent manifest (name, owner contact, the tools it wants, the callback URL TokenOps signs run callbacks to); the trust review runs at once. Returns agent_id, trust_profile_id and a one-time claim_token: exchange it with claimCredentials (the link shows how). A replay of the same request returns the same agent without the token.",
        request: Some(s::<AgentManifest>()), idempotent: true, params: &[],
        responses: &[ok(201, "Onboarded; the claim token is shown once", s::<OnboardingResponse>())],
        problems: &[400, 409, 413, 422, 503] },
    Operation { method: "GET", path: "/agents/{agent_id}", operation_id: "getAgent",
        summary: "The caller's onboarding record and trust profile",
        description: "Read your own onboarding record and trust profile (limits, checks passed). Use it to see why a trust review refused something. Another agent's id is a 404.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The agent", s::<AgentView>())], problems: READ },
    Operation { method: "GET", path: "/manifest", operation_id: "getManifest",
        summary: "The TokenOps manifest: inputs, outputs, evidence requirements, entry points",
        description: "What TokenOps sells and how to call it: the inputs and outputs of a run, the evidence it requires, the payment methods it accepts (x402 network, asset and payTo when enabled) and the entry points. Public; read it before onboarding.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The manifest", json_object)], problems: &[] },
    Operation { method: "GET", path: "/.well-known/tokenops.json", operation_id: "getWellKnownManifest",
        summary: "The TokenOps manifest at its well-known location",
        description: "The same manifest as getManifest, at the well-known location agents probe for before they know anything else. Public.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The manifest", json_object)], problems: &[] },
    Operation { method: "GET", path: "/schemas/{object}", operation_id: "getSchema",
        summary: "The JSON Schema of one loop object",
        description: "The JSON Schema (2020-12) of one loop object, by name (quote, run_contract, attestation …), for agents that validate what they receive. Public.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "A JSON Schema (2020-12)", json_object)], problems: &[404] },
    Operation { method: "GET", path: "/openapi.json", operation_id: "getOpenApi",
        summary: "This OpenAPI document",
        description: "This OpenAPI document, generated from the route table and the types the handlers parse and return; feed it to a client generator. Public.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "OpenAPI 3.1", json_object)], problems: &[] },
    Operation { method: "POST", path: "/agents/{agent_id}/credentials", operation_id: "claimCredentials",
        summary: "Exchange the one-time claim token for the credential envelope (delivered once)",
        description: "Exchange onboarding's one-time claim_token for the credential envelope: the access key (send it as `Authorization: Bearer <key>` on every other call) and the callback signing secret (verify callbacks with it). Delivered once: a second claim is refused, so keep both.",
        request: Some(s::<CredentialClaim>()), idempotent: false, params: &[],
        responses: &[ok(201, "The credential envelope", s::<CredentialEnvelope>())],
        problems: &[400, 404, 409, 413, 422, 503] },
    Operation { method: "POST", path: "/quotes", operation_id: "createQuote",
        summary: "Price a tool capability in credits",
        description: "Price a capability before paying: the credits a run costs, how long the price holds and, with x402 enabled, the amount in the token. Returns the quote_id that createSettlement and createRun take.",
        request: Some(s::<QuoteRequest>()), idempotent: true, params: &[],
        responses: &[ok(201, "The quote", s::<Quote>())], problems: WRITE },
    Operation { method: "GET", path: "/quotes/{quote_id}", operation_id: "getQuote",
        summary: "One of the caller's quotes",
        description: "Read one of your quotes again: its price in credits (and in the token with x402), how long it holds, its status.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The quote", s::<Quote>())], problems: READ },
    Operation { method: "POST", path: "/settlements", operation_id: "createSettlement",
        summary: "Route a quote to a settlement provider: payment request and unfunded entitlement (x402: paid in this request, funded at once)",
        description: "Buy credits against a quote through a settlement provider: returns the provider route with its payment request and a credit_entitlement_id, funded when the provider confirms (poll getCreditEntitlement). With provider `x402` the credits are paid on chain in this request: the first call answers 402 with what to pay, the retry with PAYMENT-SIGNATURE funds the entitlement at once.",
        request: Some(s::<SettlementRequest>()), idempotent: true, params: &[PAYMENT_SIGNATURE],
        responses: &[ok(201, "The provider route", s::<ProviderRoute>())], problems: PAID },
    Operation { method: "GET", path: "/settlements/{settlement_id}", operation_id: "getSettlement",
        summary: "One of the caller's provider routes",
        description: "Read one of your provider routes: its payment request, its status and, once it is paid, the payment itself.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The provider route", s::<ProviderRoute>())], problems: READ },
    Operation { method: "POST", path: "/providers/{provider}/confirmations", operation_id: "confirmSettlement",
        summary: "The provider's signed payment confirmation (webhook); funds the entitlement once",
        description: "The settlement provider's webhook (Standard Webhooks signature with the provider's secret), not an agent call: confirms a payment and funds its entitlement once; a redelivery returns the first confirmation.",
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
        description: "Read one of your credit entitlements: funded or not, and its live balances (available, held, spent). Poll it after createSettlement until status is funded.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The entitlement", s::<CreditEntitlement>())], problems: READ },
    Operation { method: "POST", path: "/runs", operation_id: "createRun",
        summary: "Start a run: hold the quote's credits, store the contract and evidence, enqueue (without credit_entitlement_id: pay this run over x402)",
        description: "Start one paid run: the quote, a funded credit_entitlement_id (or, with x402, none: pay this run per run with PAYMENT-SIGNATURE after the 402), the evidence bundle and the callback URL. The credits are held, the contract and evidence stored and the run queued; follow it with getRun until state is callback_delivered. Returns 202 with the run_id and links.",
        request: Some(s::<RunRequest>()), idempotent: true, params: &[PAYMENT_SIGNATURE],
        responses: &[ok(202, "Stored and queued (paid over x402: with a PAYMENT-RESPONSE header)", s::<RunAccepted>())], problems: PAID },
    Operation { method: "GET", path: "/runs/{run_id}", operation_id: "getRun",
        summary: "The full loop payload: state, next action and a link to every object",
        description: "The run's full loop payload: its state, the next action expected of you (supply_missing_evidence, redeliver_callback, ready_for_downstream_agent …) and the id, URL and sha256 of every object the loop made. Poll this after createRun or supplyEvidence.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The run", s::<FullLoopPayload>())], problems: READ },
    Operation { method: "POST", path: "/runs/{run_id}/cancel", operation_id: "cancelRun",
        summary: "Cancel a run that has not started executing; releases the held credits",
        description: "Cancel a run that has not started executing (queued or dispatched): its held credits are released. A run past that point is a 409.",
        request: None, idempotent: true, params: &[],
        responses: &[ok(200, "Cancelled (also when it already was)", s::<FullLoopPayload>())],
        problems: WRITE },
    Operation { method: "POST", path: "/runs/{run_id}/evidence", operation_id: "supplyEvidence",
        summary: "Supply missing evidence to a run waiting on it; the run replays",
        description: "When getRun says supply_missing_evidence (the evidence was partial and an exception ticket was opened), send the missing records for that ticket; the run replays with them. Returns the replay package; poll getRun.",
        request: Some(s::<EvidenceSupplement>()), idempotent: true, params: &[],
        responses: &[ok(202, "Replay queued", s::<ReplayPackage>())], problems: WRITE },
    Operation { method: "POST", path: "/runs/{run_id}/redrive", operation_id: "redriveRun",
        summary: "Resume a failed run from the stage that failed; takes its released hold again",
        description: "Resume a run that failed (state failed, next action redrive_run) from the stage that failed, holding its released credits again. Use after the cause (for example an outage) is gone.",
        request: None, idempotent: true, params: &[],
        responses: &[ok(202, "Redriven: the run is back in the state it failed from", s::<FullLoopPayload>())],
        problems: WRITE },
    Operation { method: "GET", path: "/queue", operation_id: "getQueue",
        summary: "Your runs waiting for dispatch, the queue's dead-letter count, the consumer's heartbeat",
        description: "Your runs waiting for dispatch, the queue's dead-letter count and the consumer's heartbeat. Use it when one of your runs stays queued.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The queue monitor", s::<QueueMonitor>())], problems: &[401, 503] },
    Operation { method: "GET", path: "/exceptions/{exception_id}", operation_id: "getException",
        summary: "An exception ticket (exc_…) or the replay package that resolved it (replay_…)",
        description: "Read an exception ticket (exc_…: what evidence is missing and why) or the replay package that resolved it (replay_…), by the id in getRun's objects.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The ticket or replay package", any_of::<ExceptionTicket, ReplayPackage>)],
        problems: READ },
    Operation { method: "GET", path: "/results/{result_id}", operation_id: "getResult",
        summary: "A result package (result_…) or its result contract (rcontract_…)",
        description: "Read the run's result package (result_…: the review's findings) or its result contract (rcontract_…: the digests it binds), by the id in getRun's objects.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The result package or contract", any_of::<ResultPackage, ResultContract>)],
        problems: READ },
    Operation { method: "GET", path: "/receipts/{receipt_id}", operation_id: "getReceipt",
        summary: "A usage receipt (usage_…) or settlement receipt (srcpt_…)",
        description: "Read a usage receipt (usage_…: the credits the run spent) or a settlement receipt (srcpt_…: how it was paid), by the id in getRun's objects.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The receipt", any_of::<UsageReceipt, SettlementReceipt>)],
        problems: READ },
    Operation { method: "POST", path: "/runs/{run_id}/callback/redeliver", operation_id: "redeliverCallback",
        summary: "Send the run's signed callback again",
        description: "Send the run's signed callback again, after your endpoint was down (next action redeliver_callback). Returns the delivery record; 502 when every attempt failed, with each attempt listed.",
        request: None, idempotent: true, params: &[],
        responses: &[
            ok(200, "Delivered", s::<CallbackRecord>()),
            ok(502, "Every attempt failed; the record lists them", s::<CallbackRecord>()),
        ],
        problems: WRITE },
    Operation { method: "GET", path: "/ledger", operation_id: "getLedger",
        summary: "The caller's hash-chained ledger (exportable; verify offline with `tokenops verify ledger`)",
        description: "Your hash-chained ledger (every money movement, each entry linked to the previous by hash), or one run's entries with run_id. Export it and verify it offline (`tokenops verify ledger`).",
        request: None, idempotent: false,
        params: &[Param { location: "query", name: "run_id", required: false, description: "Only this run's entries (another agent's run, or an id of the wrong shape, is a 404)", pattern: Some("^run_[a-z0-9_-]{1,80}$") }],
        responses: &[ok(200, "The chain", s::<LedgerView>())], problems: &[401, 404, 503] },
    Operation { method: "GET", path: "/ledger/verify", operation_id: "verifyLedger",
        summary: "Verify the caller's ledger chain",
        description: "Check your ledger's chain server-side: every entry's hash and link. Returns valid, the entry count and the first broken link if any.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The verification report", s::<ChainReport>())], problems: &[401, 503] },
    Operation { method: "GET", path: "/attestations/{attestation_id}", operation_id: "getAttestation",
        summary: "A run's DSSE attestation (in-toto statement)",
        description: "A run's attestation: an in-toto statement over the run's objects and payment, signed as a DSSE envelope (Ed25519), with the readable statement beside it. Verify it offline against getKeys.",
        request: None, idempotent: false, params: &[],
        responses: &[ok(200, "The attestation", s::<Attestation>())], problems: READ },
    Operation { method: "GET", path: "/keys", operation_id: "getKeys",
        summary: "The attestation verification keys",
        description: "The public keys that sign attestations (Ed25519, raw base64 and SPKI PEM), for offline verification. Public.",
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
    let key_schema =
        json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"});
    if op.idempotent {
        params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Retrying with the same key and request returns the first response (for 24 h)",
            "schema": key_schema}));
    } else if op.method == "POST" {
        params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Accepted, never replayed: this answer carries secrets, so it is not stored; the operation is single-use instead (a second call is refused)",
            "schema": key_schema}));
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
    let paid = op.params.iter().any(|p| p.name == PAYMENT_SIGNATURE.name);
    let mut responses = Map::new();
    for r in op.responses {
        let mut o = json!({"description": r.description,
            "content": {"application/json": {"schema": schema_value(resp, r.schema)}}});
        if (200..300).contains(&r.status) {
            let mut headers = Map::new();
            if op.idempotent {
                headers.insert("Idempotent-Replayed".into(), json!({
                    "description": "Present (`true`) when this is the stored response to an earlier request with the same Idempotency-Key",
                    "required": false, "schema": {"type": "string", "enum": ["true"]}}));
            }
            if paid {
                headers.insert("PAYMENT-RESPONSE".into(), json!({
                    "description": "x402 v2, when this request was paid: base64 of the JSON SettlementResponse (success, transaction, network, payer)",
                    "required": false, "schema": {"type": "string"}}));
            }
            if !headers.is_empty() {
                o["headers"] = Value::Object(headers);
            }
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
        let mut o = json!({"description": problem_description(status),
            "content": {"application/problem+json": {"schema": problem}}});
        if let Some(headers) = problem_headers(status) {
            o["headers"] = headers;
        }
        responses.insert(status.to_string(), o);
    }
    let mut o = json!({
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": op.description,
        "tags": [route.stage],
        "x-tokenops-operation": route.operation.as_str(),
        "security": if route.auth { json!([{"accessKey": []}]) } else { json!([]) },
        "parameters": params,
        "responses": responses,
    });
    if let Some(f) = op.request {
        let mut body = json!({"schema": schema_value(req, f)});
        if let Some(example) = request_example(route) {
            body["examples"] = json!({"events": {
                "summary": "The sample request in events/ (ids as the earlier calls return them)",
                "value": example}});
        }
        o["requestBody"] = json!({"required": true, "content": {"application/json": body}});
    }
    o
}

/// The headers a problem of this status carries.
fn problem_headers(status: u16) -> Option<Value> {
    let header = |description: &str| json!({"description": description, "required": true, "schema": {"type": "string"}});
    Some(match status {
        401 => {
            json!({"WWW-Authenticate": header("`Bearer` (the access key from the credential envelope)")})
        }
        402 => {
            json!({"PAYMENT-REQUIRED": header("x402 v2: base64 of the JSON PaymentRequired (x402Version, resource, accepts: scheme, network, amount, asset, payTo, maxTimeoutSeconds, extra); a refused payment's `error` says why")})
        }
        503 => {
            json!({"Retry-After": {"description": "Seconds to wait before retrying", "required": true, "schema": {"type": "string", "pattern": "^[0-9]+$"}}})
        }
        _ => return None,
    })
}

/// The sample API Gateway events (`events/`, the functions' fixtures) that carry a request body.
const EVENTS: &[&str] = &[
    include_str!("../../../events/onboarding.json"),
    include_str!("../../../events/trust.json"),
    include_str!("../../../events/quote.json"),
    include_str!("../../../events/provider_route.json"),
];

/// A route's request example from `events/`: the event whose `routeKey` is the route (its
/// `{{id}}` placeholders read as the pattern's `{id}`), its body with the placeholders filled by
/// ids of the right kind.
fn request_example(route: &Route) -> Option<Value> {
    let key = format!("{} {}", route.method, route.pattern);
    EVENTS.iter().find_map(|e| {
        let event: Value = serde_json::from_str(e).ok()?;
        let route_key = event["routeKey"]
            .as_str()?
            .replace("{{", "{")
            .replace("}}", "}");
        (route_key == key)
            .then(|| event["body"].as_str().map(fill_placeholders))
            .flatten()
            .and_then(|body| serde_json::from_str(&body).ok())
    })
}

/// `{{quote_id}}` → `quote_01jz8qv3c5w6k2f9m4t7r1n0bd`; `{{claim_token}}` → a token of its shape.
fn fill_placeholders(body: &str) -> String {
    let mut out = body.to_string();
    while let Some(start) = out.find("{{") {
        let Some(len) = out[start..].find("}}") else {
            break;
        };
        let name = &out[start + 2..start + len];
        let prefix = name.strip_suffix("_id").unwrap_or(name);
        let prefix = match prefix {
            "settlement" => "stl",
            "credit_entitlement" => "cred",
            "claim_token" => "claim",
            p => p,
        };
        let value = format!("{prefix}_01jz8qv3c5w6k2f9m4t7r1n0bd");
        out.replace_range(start..start + len + 2, &value);
    }
    out
}

/// What a loop stage's operations are for (the document's tags).
fn stage_description(stage: &str) -> &'static str {
    match stage {
        "onboarding" => "Register an agent and read what TokenOps offers: the manifest, the schemas, this document.",
        "trust" => "Claim the agent's credentials: the access key and the callback signing secret.",
        "quote" => "Price a run in credits (and, with x402, in the token).",
        "provider_route" => "Buy credits through a settlement provider (the test provider, or x402 on chain).",
        "credit_entitlement" => "The credits a settlement funded, their live balances, and the provider's confirmation webhook.",
        "run_contract" => "Start, read, cancel and heal runs: the contract, the held credits and the full loop payload.",
        "queue" => "Runs waiting for dispatch, dead letters, and resuming a failed run.",
        "tokenops_execution" => "The evidence review's exception tickets and the replays that resolved them.",
        "result_contract" => "A run's result package and the contract that binds its digests.",
        "settlement_receipt" => "How a run was paid.",
        "usage_receipt" => "What a run spent, and how it was paid.",
        "callback" => "The run's signed callback to the agent, and sending it again.",
        "ledger" => "The agent's hash-chained ledger of money movements, exportable and verifiable offline.",
        "attestation" => "Signed in-toto attestations of each run, and the keys to verify them offline.",
        _ => "A stage of the TokenOps loop.",
    }
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
        .map(|s| json!({"name": s, "description": stage_description(s)}))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "TokenOps API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The agent-facing TokenOps loop: onboarding and trust, quote, settlement, runs and their results, receipts, callbacks, ledger and attestations. Errors are RFC 9457 problem details (application/problem+json).",
            "license": {"name": "Apache 2.0", "identifier": env!("CARGO_PKG_LICENSE")},
            "contact": {"name": "TokenOps", "url": "https://tokenops.dev"},
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
            let words = op["description"]
                .as_str()
                .map_or(0, |d| d.split(' ').count());
            assert!(
                words >= 12,
                "{at}: a description for an agent, not {words} words"
            );
            if method == "POST" {
                let params = op["parameters"].as_array().unwrap();
                assert!(
                    params.iter().any(|p| p["name"] == "Idempotency-Key"),
                    "{at}: Idempotency-Key not documented"
                );
            }
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

    #[test]
    fn the_sample_events_are_the_request_examples_with_ids_of_their_kind() {
        let doc = openapi("http://localhost");
        let example = |p: &str| {
            doc["paths"][p]["post"]["requestBody"]["content"]["application/json"]["examples"]
                ["events"]["value"]
                .clone()
        };
        assert_eq!(example("/agents")["name"], "fixture-agent");
        assert_eq!(example("/quotes")["requested_tool"], "tokenops");
        let settlement = example("/settlements");
        assert!(settlement["quote_id"]
            .as_str()
            .unwrap()
            .starts_with("quote_"));
        assert!(crate::ids::parse_id(
            "quote",
            settlement["quote_id"].as_str().unwrap(),
            "quote_id"
        )
        .is_ok());
        assert!(example("/agents/{agent_id}/credentials")["claim_token"].is_string());
        // Each example is a body the API parses.
        serde_json::from_value::<AgentManifest>(example("/agents")).unwrap();
        serde_json::from_value::<QuoteRequest>(example("/quotes")).unwrap();
        serde_json::from_value::<SettlementRequest>(settlement).unwrap();
        serde_json::from_value::<CredentialClaim>(example("/agents/{agent_id}/credentials"))
            .unwrap();
    }

    #[test]
    fn tags_info_and_the_x402_headers_are_documented() {
        let doc = openapi("http://localhost");
        for t in doc["tags"].as_array().unwrap() {
            assert!(
                t["description"]
                    .as_str()
                    .is_some_and(|d| d.len() > 10 && !d.starts_with("A stage")),
                "{t}"
            );
        }
        assert_eq!(doc["info"]["license"]["identifier"], "Apache-2.0");
        let run = &doc["paths"]["/runs"]["post"]["responses"];
        assert!(run["402"]["headers"]["PAYMENT-REQUIRED"].is_object());
        assert!(run["202"]["headers"]["PAYMENT-RESPONSE"].is_object());
        assert!(run["503"]["headers"]["Retry-After"].is_object());
        assert!(run["401"]["headers"]["WWW-Authenticate"].is_object());
        let quote = &doc["paths"]["/quotes"]["post"]["responses"]["201"];
        assert!(
            quote["headers"].get("PAYMENT-RESPONSE").is_none(),
            "not a paid route"
        );
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
