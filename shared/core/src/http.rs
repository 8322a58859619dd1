//! The HTTP edge, independent of where requests come from (API Gateway v2 events in Lambda, the
//! local server): a plain request/response pair, the route table, problem+json rendering and
//! body parsing that names the offending field.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::ApiError;

/// Bodies above this are refused with 413 before parsing.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Clone, Debug, Default)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub params: BTreeMap<String, String>,
    pub query: BTreeMap<String, String>,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// The route this request matched.
    pub operation: Op,
    /// The client's address as the edge saw it (API Gateway's `sourceIp`, the local socket):
    /// anonymous callers' idempotency keys are scoped by it.
    pub source_ip: Option<String>,
}

impl ApiRequest {
    /// From an HTTP request's parts (the local server and `lambda_http` both hand us these);
    /// header names lower-cased, non-UTF-8 header values dropped.
    pub fn from_http(parts: &http::request::Parts, body: Vec<u8>) -> ApiRequest {
        let headers = parts
            .headers
            .iter()
            // Kept even when not visible ASCII, so a malformed value is refused by its check
            // (e.g. a non-ASCII Idempotency-Key is a 400) instead of read as absent.
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_ascii_lowercase(), v)
            })
            .collect();
        ApiRequest {
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            query: parse_query(parts.uri.query().unwrap_or("")),
            headers,
            body,
            ..Default::default()
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    pub fn param(&self, name: &str) -> &str {
        self.params.get(name).map(String::as_str).unwrap_or("")
    }

    /// Parses the JSON body into `T`; errors name the field serde stopped at.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.len() > MAX_BODY_BYTES {
            return Err(ApiError::too_large(MAX_BODY_BYTES));
        }
        if self.body.is_empty() {
            return Err(ApiError::bad_request("body", "a JSON body is required"));
        }
        let de = &mut serde_json::Deserializer::from_slice(&self.body);
        let parsed: Result<T, (String, serde_json::Error)> =
            serde_path_to_error::deserialize(&mut *de)
                .map_err(|e| (e.path().to_string(), e.into_inner()))
                .and_then(|v| de.end().map(|_| v).map_err(|e| (".".to_string(), e)));
        match parsed {
            Ok(v) => Ok(v),
            Err((path, inner)) => {
                let msg = inner.to_string();
                Err(match inner.classify() {
                    serde_json::error::Category::Data => {
                        // "unknown field `x`" / "missing field `y`" name a child of the path.
                        // serde_path_to_error's path already ends at an unknown field; a missing
                        // field is named only in the message, as a child of the path.
                        let field = match field_from_serde_message(&msg) {
                            Some(f) if msg.starts_with("missing field") => {
                                if path == "." {
                                    f
                                } else {
                                    format!("{path}.{f}")
                                }
                            }
                            _ if path == "." => "body".to_string(),
                            _ => path,
                        };
                        ApiError::invalid(&field, msg)
                    }
                    _ => ApiError::bad_request("body", format!("malformed JSON: {msg}")),
                })
            }
        }
    }
}

/// serde's messages quote the field: "missing field `quote_id`", "unknown field `x`, expected …".
fn field_from_serde_message(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let end = msg[start..].find('`')? + start;
    let f = &msg[start..end];
    (!f.is_empty() && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| f.to_string())
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    pub fn json<T: Serialize>(status: u16, value: &T) -> ApiResponse {
        match serde_json::to_vec(value) {
            Ok(body) => ApiResponse {
                status,
                headers: vec![("content-type".into(), "application/json".into())],
                body,
            },
            Err(e) => ApiResponse::problem(&ApiError::internal(format!("response encoding: {e}"))),
        }
    }
    /// The problem document, with the headers the error carries (`WWW-Authenticate`, `Allow`, …).
    pub fn problem(e: &ApiError) -> ApiResponse {
        let body = serde_json::to_vec(e).unwrap_or_else(|_| b"{}".to_vec());
        let mut headers = vec![("content-type".into(), "application/problem+json".into())];
        headers.extend(e.headers().iter().cloned());
        ApiResponse {
            status: e.status,
            headers,
            body,
        }
    }
    pub fn from_result<T: Serialize>(status: u16, r: Result<T, ApiError>) -> ApiResponse {
        match r {
            Ok(v) => ApiResponse::json(status, &v),
            Err(e) => ApiResponse::problem(&e),
        }
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json_body(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What a route does. Handlers dispatch on this (never on strings); its name is the route's
/// `operation` in the manifest and the OpenAPI document's `x-tokenops-operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Op {
    /// A request not matched to a route yet.
    #[default]
    Unrouted,
    CreateAgent,
    GetAgent,
    Manifest,
    Schema,
    Openapi,
    ClaimCredentials,
    CreateQuote,
    GetQuote,
    CreateSettlement,
    GetSettlement,
    ProviderConfirmation,
    GetEntitlement,
    CreateRun,
    GetRun,
    CancelRun,
    SupplyEvidence,
    QueueMonitor,
    RedriveRun,
    GetException,
    GetResult,
    GetReceipt,
    RedeliverCallback,
    GetLedger,
    VerifyLedger,
    GetAttestation,
    GetKeys,
}

impl Op {
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Unrouted => "unrouted",
            Op::CreateAgent => "create_agent",
            Op::GetAgent => "get_agent",
            Op::Manifest => "manifest",
            Op::Schema => "schema",
            Op::Openapi => "openapi",
            Op::ClaimCredentials => "claim_credentials",
            Op::CreateQuote => "create_quote",
            Op::GetQuote => "get_quote",
            Op::CreateSettlement => "create_settlement",
            Op::GetSettlement => "get_settlement",
            Op::ProviderConfirmation => "provider_confirmation",
            Op::GetEntitlement => "get_entitlement",
            Op::CreateRun => "create_run",
            Op::GetRun => "get_run",
            Op::CancelRun => "cancel_run",
            Op::SupplyEvidence => "supply_evidence",
            Op::QueueMonitor => "queue_monitor",
            Op::RedriveRun => "redrive_run",
            Op::GetException => "get_exception",
            Op::GetResult => "get_result",
            Op::GetReceipt => "get_receipt",
            Op::RedeliverCallback => "redeliver_callback",
            Op::GetLedger => "get_ledger",
            Op::VerifyLedger => "verify_ledger",
            Op::GetAttestation => "get_attestation",
            Op::GetKeys => "get_keys",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the API: method, path pattern, the stage (function) that serves it, whether it needs
/// an access key, and an operation name handlers dispatch on.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: &'static str,
    pub pattern: &'static str,
    pub stage: &'static str,
    pub auth: bool,
    pub operation: Op,
}

const fn r(
    method: &'static str,
    pattern: &'static str,
    stage: &'static str,
    auth: bool,
    operation: Op,
) -> Route {
    Route {
        method,
        pattern,
        stage,
        auth,
        operation,
    }
}

/// The whole agent-facing API (spec §3). The local server, the Lambda functions, the manifest's
/// entry points and the OpenAPI document all read this table.
pub const ROUTES: &[Route] = &[
    r("POST", "/agents", "onboarding", false, Op::CreateAgent),
    r(
        "GET",
        "/agents/{agent_id}",
        "onboarding",
        true,
        Op::GetAgent,
    ),
    r("GET", "/manifest", "onboarding", false, Op::Manifest),
    r(
        "GET",
        "/.well-known/tokenops.json",
        "onboarding",
        false,
        Op::Manifest,
    ),
    r("GET", "/schemas/{object}", "onboarding", false, Op::Schema),
    r("GET", "/openapi.json", "onboarding", false, Op::Openapi),
    r(
        "POST",
        "/agents/{agent_id}/credentials",
        "trust",
        false,
        Op::ClaimCredentials,
    ),
    r("POST", "/quotes", "quote", true, Op::CreateQuote),
    r("GET", "/quotes/{quote_id}", "quote", true, Op::GetQuote),
    r(
        "POST",
        "/settlements",
        "provider_route",
        true,
        Op::CreateSettlement,
    ),
    r(
        "GET",
        "/settlements/{settlement_id}",
        "provider_route",
        true,
        Op::GetSettlement,
    ),
    r(
        "POST",
        "/providers/{provider}/confirmations",
        "credit_entitlement",
        false,
        Op::ProviderConfirmation,
    ),
    r(
        "GET",
        "/credit-entitlements/{credit_entitlement_id}",
        "credit_entitlement",
        true,
        Op::GetEntitlement,
    ),
    r("POST", "/runs", "run_contract", true, Op::CreateRun),
    r("GET", "/runs/{run_id}", "run_contract", true, Op::GetRun),
    r(
        "POST",
        "/runs/{run_id}/cancel",
        "run_contract",
        true,
        Op::CancelRun,
    ),
    r(
        "POST",
        "/runs/{run_id}/evidence",
        "run_contract",
        true,
        Op::SupplyEvidence,
    ),
    r("GET", "/queue", "queue", true, Op::QueueMonitor),
    r(
        "POST",
        "/runs/{run_id}/redrive",
        "queue",
        true,
        Op::RedriveRun,
    ),
    r(
        "GET",
        "/exceptions/{exception_id}",
        "tokenops_execution",
        true,
        Op::GetException,
    ),
    r(
        "GET",
        "/results/{result_id}",
        "result_contract",
        true,
        Op::GetResult,
    ),
    r(
        "GET",
        "/receipts/{receipt_id}",
        "usage_receipt",
        true,
        Op::GetReceipt,
    ),
    r(
        "POST",
        "/runs/{run_id}/callback/redeliver",
        "callback",
        true,
        Op::RedeliverCallback,
    ),
    r("GET", "/ledger", "ledger", true, Op::GetLedger),
    r("GET", "/ledger/verify", "ledger", true, Op::VerifyLedger),
    r(
        "GET",
        "/attestations/{attestation_id}",
        "attestation",
        true,
        Op::GetAttestation,
    ),
    r("GET", "/keys", "attestation", false, Op::GetKeys),
];

/// Path parameters bound by a route pattern (`{run_id}` → value).
pub type PathParams = BTreeMap<String, String>;

/// Finds the route for a method and path; `Err(405)` (with `Allow`) when the path exists with
/// other methods. Every path parameter is checked against the shape its name implies
/// ([`ids::check_param`](crate::ids::check_param)): a malformed or overlong id is a 404 naming
/// the parameter here, before any handler or store sees it.
pub fn match_route(method: &str, path: &str) -> Result<Option<(Route, PathParams)>, ApiError> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut allowed: Vec<&str> = Vec::new();
    for route in ROUTES {
        let pat: Vec<&str> = route.pattern.split('/').collect();
        if pat.len() != segs.len() {
            continue;
        }
        let mut params = BTreeMap::new();
        let ok = pat.iter().zip(&segs).all(|(p, s)| {
            match p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) if !s.is_empty() => {
                    params.insert(name.to_string(), (*s).to_string());
                    true
                }
                Some(_) => false,
                None => p == s,
            }
        });
        if ok {
            if route.method == method {
                for (name, value) in &params {
                    crate::ids::check_param(name, value)?;
                }
                return Ok(Some((*route, params)));
            }
            if !allowed.contains(&route.method) {
                allowed.push(route.method);
            }
        }
    }
    if allowed.is_empty() {
        Ok(None)
    } else {
        Err(ApiError::method_not_allowed(&allowed))
    }
}

/// Query parameters that name ids (`?run_id=`) are held to the same shapes as path parameters.
pub fn check_query_ids(query: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (name, value) in query {
        if crate::ids::ID_PARAMS.iter().any(|(n, _)| n == name) {
            crate::ids::check_param(name, value)?;
        }
    }
    Ok(())
}

/// Parses `a=b&c=d` (percent-decoding is not needed for the ids and numbers we accept).
pub fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_with_params_and_405() {
        let (r, p) = match_route("GET", "/runs/run_abc").unwrap().unwrap();
        assert_eq!((r.stage, r.operation), ("run_contract", Op::GetRun));
        assert_eq!(p["run_id"], "run_abc");
        let (r, _) = match_route("POST", "/runs/run_abc/callback/redeliver")
            .unwrap()
            .unwrap();
        assert_eq!(r.stage, "callback");
        let e = match_route("DELETE", "/runs/run_abc").unwrap_err();
        assert_eq!((e.status, e.header("allow")), (405, Some("GET")));
        let e = match_route("PUT", "/agents").unwrap_err();
        assert_eq!((e.status, e.header("allow")), (405, Some("POST")));
        let r = ApiResponse::problem(&e);
        assert_eq!(
            (r.header("allow"), r.header("content-type")),
            (Some("POST"), Some("application/problem+json"))
        );
        assert!(match_route("GET", "/nope").unwrap().is_none());
        // every stage that serves HTTP is on the seed's path
        assert!(ROUTES.iter().all(|r| crate::model::PATH.contains(&r.stage)));
    }

    #[test]
    fn path_and_query_ids_are_held_to_their_shape() {
        let long = "a".repeat(crate::ids::MAX_ID_SUFFIX + 1);
        for (method, path, field) in [
            ("GET", format!("/receipts/usage_{long}"), "receipt_id"),
            (
                "GET",
                format!("/receipts/run_{}", "a".repeat(26)),
                "receipt_id",
            ),
            ("GET", "/results/RESULT_X".to_string(), "result_id"),
            ("GET", format!("/exceptions/exc_{long}"), "exception_id"),
            ("GET", "/runs/run_%2e%2e".to_string(), "run_id"),
            (
                "POST",
                format!("/agents/{}/credentials", "a".repeat(52)),
                "agent_id",
            ),
            (
                "POST",
                "/providers/Nope!/confirmations".to_string(),
                "provider",
            ),
            ("GET", format!("/schemas/{}", "s".repeat(300)), "object"),
        ] {
            let e = match_route(method, &path).unwrap_err();
            assert_eq!((e.status, e.field.as_deref()), (404, Some(field)), "{path}");
        }
        assert!(match_route("GET", "/receipts/srcpt_01abc")
            .unwrap()
            .is_some());
        assert!(match_route("GET", "/schemas/run_contract")
            .unwrap()
            .is_some());
        // Every parameter of the route table has a declared shape.
        for route in ROUTES {
            for seg in route.pattern.split('/') {
                if let Some(name) = seg.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    assert!(
                        crate::ids::ID_PARAMS.iter().any(|(n, _)| *n == name)
                            || crate::ids::NAME_PARAMS.contains(&name),
                        "{} has an undeclared parameter {name}",
                        route.pattern
                    );
                }
            }
        }
        let q = parse_query(&format!("run_id=run_{long}&other=x"));
        let e = check_query_ids(&q).unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (404, Some("run_id")));
        assert!(check_query_ids(&parse_query("run_id=run_01abc&limit=5")).is_ok());
        assert!(check_query_ids(&parse_query("run_id=")).is_err());
    }

    #[test]
    fn a_header_that_is_not_ascii_is_kept_for_its_check_not_dropped() {
        let (parts, ()) = http::Request::builder()
            .header(
                "idempotency-key",
                http::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
            )
            .body(())
            .unwrap()
            .into_parts();
        let req = ApiRequest::from_http(&parts, Vec::new());
        let key = req.header("idempotency-key").expect("kept");
        assert!(
            !key.bytes().all(|b| b.is_ascii_graphic()),
            "so the key check refuses it"
        );
    }

    #[test]
    fn body_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Q {
            quote_id: String,
            credits: i64,
        }
        let req = |b: &str| ApiRequest {
            body: b.as_bytes().to_vec(),
            ..Default::default()
        };
        let e = req(r#"{"credits": 1}"#).json::<Q>().unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (422, Some("quote_id")));
        let e = req(r#"{"quote_id": "q", "credits": 1, "x": 2}"#)
            .json::<Q>()
            .unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (422, Some("x")));
        let e = req(r#"{"quote_id": "q", "credits": "ten"}"#)
            .json::<Q>()
            .unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (422, Some("credits")));
        let e = req(r#"{"quote_id": "#).json::<Q>().unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (400, Some("body")));
        let big = ApiRequest {
            body: vec![b' '; MAX_BODY_BYTES + 1],
            ..Default::default()
        };
        assert_eq!(big.json::<Q>().unwrap_err().status, 413);
    }
}
