//! The emulator's AWS endpoint (what `AWS_ENDPOINT_URL` and moto's `MOTO_PORT` point at):
//! Lambda `Invoke` runs the function binaries; `/_emulator/*` is the emulator's own control API;
//! every other request is forwarded unchanged to the upstream emulator (moto, or LocalStack).

use std::sync::{Arc, Mutex};

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::lambda::{Functions, Outcome};

/// An injected task failure (tests): the next `times` invocations of `function` whose payload
/// contains `contains` fail with `error_type`; with `after_invoke` the function runs first and
/// its result is discarded (a lost response: the effect happened, the caller sees an error).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Fault {
    pub function: String,
    #[serde(default)]
    pub contains: Option<String>,
    pub error_type: String,
    #[serde(default = "one")]
    pub times: u32,
    #[serde(default)]
    pub after_invoke: bool,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Default)]
pub struct Faults {
    pending: Arc<Mutex<Vec<Fault>>>,
    /// Every fault that fired, with the payload it hit (tests assert their fault really fired).
    fired: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Faults {
    pub fn add(&self, f: Fault) {
        if let Ok(mut v) = self.pending.lock() {
            v.push(f);
        }
    }
    pub fn report(&self) -> serde_json::Value {
        let pending = self.pending.lock().map(|v| v.clone()).unwrap_or_default();
        let fired = self.fired.lock().map(|v| v.clone()).unwrap_or_default();
        json!({"pending": pending, "fired": fired})
    }
    /// Consumes one matching fault, if any.
    fn take(&self, function: &str, payload: &[u8]) -> Option<Fault> {
        let f = self.take_pending(function, payload)?;
        if let Ok(mut fired) = self.fired.lock() {
            fired.push(json!({"function": function, "error_type": f.error_type, "payload": String::from_utf8_lossy(payload)}));
        }
        Some(f)
    }
    fn take_pending(&self, function: &str, payload: &[u8]) -> Option<Fault> {
        let mut v = self.pending.lock().ok()?;
        let text = String::from_utf8_lossy(payload);
        let i = v.iter().position(|f| {
            f.times > 0
                && (f.function == function || function.ends_with(&format!("-{}", f.function)))
                && f.contains.as_deref().is_none_or(|c| text.contains(c))
        })?;
        v[i].times -= 1;
        let f = v[i].clone();
        if v[i].times == 0 {
            v.remove(i);
        }
        Some(f)
    }
}

#[derive(Clone)]
pub struct Front {
    pub functions: Functions,
    pub upstream: String,
    pub http: reqwest::Client,
    pub faults: Faults,
    /// Served at `GET /_emulator/info`: what was created and where the API is.
    pub info: Arc<serde_json::Value>,
    /// Deliver every SQS batch twice (tests of at-least-once delivery).
    pub duplicate_sqs: Arc<std::sync::atomic::AtomicBool>,
}

impl Front {
    /// Invokes by name or ARN, applying injected faults.
    pub async fn invoke(&self, function: &str, payload: Vec<u8>) -> Option<Outcome> {
        let f = self.functions.get(function)?.clone();
        if let Some(fault) = self.faults.take(&f.name, &payload) {
            tracing::info!(function = %f.name, error_type = %fault.error_type, after_invoke = fault.after_invoke, "injected fault");
            if fault.after_invoke {
                let _ = f.invoke(payload).await;
            }
            return Some(Outcome::FunctionError {
                body: serde_json::to_vec(&json!({"errorType": fault.error_type, "errorMessage": "injected by the emulator"})).unwrap_or_default(),
                error_type: fault.error_type,
            });
        }
        Some(f.invoke(payload).await)
    }
}

fn response(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body)).unwrap_or_default()
}

fn json_response(status: u16, v: &serde_json::Value) -> Response {
    response(
        status,
        &[("content-type", "application/json")],
        v.to_string().into_bytes(),
    )
}

pub async fn handle(State(front): State<Front>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = to_bytes(body, 64 * 1024 * 1024).await else {
        return json_response(413, &json!({"message": "request body too large"}));
    };
    let path = parts.uri.path();
    // Lambda Invoke: POST /2015-03-31/functions/{FunctionName}/invocations
    if let Some(rest) = path.strip_prefix("/2015-03-31/functions/") {
        if let Some(name) = rest.strip_suffix("/invocations") {
            let name = percent_decode(name);
            return match front.invoke(&name, body.to_vec()).await {
                Some(Outcome::Ok(b)) => response(
                    200,
                    &[
                        ("content-type", "application/json"),
                        ("x-amz-executed-version", "$LATEST"),
                    ],
                    b,
                ),
                Some(Outcome::FunctionError { body, .. }) => response(
                    200,
                    &[
                        ("content-type", "application/json"),
                        ("x-amz-function-error", "Unhandled"),
                        ("x-amz-executed-version", "$LATEST"),
                    ],
                    body,
                ),
                None => json_response(
                    404,
                    &json!({"Type": "User", "__type": "ResourceNotFoundException", "message": format!("Function not found: {name}")}),
                ),
            };
        }
    }
    match (parts.method.as_str(), path) {
        ("GET", "/_emulator/info") => return json_response(200, &front.info),
        ("GET", "/_emulator/faults") => return json_response(200, &front.faults.report()),
        ("POST", "/_emulator/faults") => {
            return match serde_json::from_slice::<Fault>(&body) {
                Ok(f) => {
                    front.faults.add(f);
                    json_response(201, &json!({"ok": true}))
                }
                Err(e) => json_response(400, &json!({"message": format!("bad fault: {e}")})),
            }
        }
        ("POST", "/_emulator/duplicate-sqs") => {
            let on = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["enabled"].as_bool())
                .unwrap_or(true);
            front
                .duplicate_sqs
                .store(on, std::sync::atomic::Ordering::SeqCst);
            return json_response(200, &json!({"enabled": on}));
        }
        _ => {}
    }
    forward(&front, parts, body.to_vec()).await
}

/// Forwards to the upstream emulator with method, headers (Host included, so URLs the upstream
/// builds from it point back here) and body unchanged.
async fn forward(front: &Front, parts: axum::http::request::Parts, body: Vec<u8>) -> Response {
    let url = format!(
        "{}{}",
        front.upstream.trim_end_matches('/'),
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut req = front.http.request(parts.method.clone(), &url).body(body);
    for (k, v) in parts.headers.iter() {
        if k.as_str().eq_ignore_ascii_case("content-length") {
            continue;
        }
        req = req.header(k, v);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let headers: Vec<(String, String)> = r
                .headers()
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "content-length" | "transfer-encoding" | "connection"
                    )
                })
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let bytes = r.bytes().await.unwrap_or_default();
            let mut b = Response::builder().status(status);
            for (k, v) in headers {
                b = b.header(k, v);
            }
            b.body(Body::from(bytes)).unwrap_or_default()
        }
        Err(e) => json_response(
            502,
            &json!({"message": format!("upstream {} unreachable: {e}", front.upstream)}),
        ),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_are_percent_decoded() {
        assert_eq!(
            percent_decode(
                "arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Atokenops-ledger"
            ),
            "arn:aws:lambda:us-east-1:123456789012:function:tokenops-ledger"
        );
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%4"), "bad%4");
    }

    #[test]
    fn faults_match_by_function_and_payload_and_are_consumed() {
        let faults = Faults::default();
        faults.add(Fault {
            function: "usage_receipt".into(),
            contains: Some("run_a".into()),
            error_type: "StoreUnavailable".into(),
            times: 1,
            after_invoke: true,
        });
        assert!(faults
            .take("tokenops-usage_receipt", br#"{"run_id":"run_b"}"#)
            .is_none());
        assert!(faults
            .take("tokenops-ledger", br#"{"run_id":"run_a"}"#)
            .is_none());
        let f = faults
            .take("tokenops-usage_receipt", br#"{"run_id":"run_a"}"#)
            .unwrap();
        assert_eq!(f.error_type, "StoreUnavailable");
        assert!(faults
            .take("tokenops-usage_receipt", br#"{"run_id":"run_a"}"#)
            .is_none());
    }
}
