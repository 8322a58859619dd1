//! The emulator's AWS endpoint (what `AWS_ENDPOINT_URL` and moto's `MOTO_PORT` point at):
//! Lambda `Invoke` runs the function binaries; `/_emulator/*` is the emulator's own control API;
//! every other request is forwarded unchanged to the upstream emulator (moto, or LocalStack).
//!
//! Control API:
//! * `GET /_emulator/info` — what was created and where the API is (plus `external_functions`).
//! * `POST /_emulator/faults`, `GET /_emulator/faults` — injected task failures ([`Fault`]);
//!   `DELETE /_emulator/faults` clears the pending ones (all, or `{"function": …}`'s).
//! * `POST /_emulator/functions` — registers an *external function* ([`ExternalFunction`]): a
//!   Lambda function served by any HTTP handler, e.g. a test's stub.
//! * `POST /_emulator/duplicate-sqs {"enabled": bool}` — deliver every SQS batch twice;
//!   `GET` reports the switch and how many batches were delivered twice.
//!
//! Step Functions `StartSyncExecution`, which moto lacks, is answered here ([`super::sfn`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::lambda::{Functions, Outcome};

/// An injected task failure (tests): the next `times` invocations of `function` whose payload
/// contains `contains` fail with `error_type`; with `after_invoke` the function runs first and
/// its result is discarded (a lost response: the effect happened, the caller sees an error).
/// With `until_cleared` every matching invocation fails until `DELETE /_emulator/faults`: with
/// an error type the state machine does not retry (`Internal`), a stage that fails for good.
///
/// With `aws_action` instead of `function` (`"AmazonSQS.SendMessage"`, any `X-Amz-Target` of an
/// AWS JSON protocol request reaching the front) the *AWS request* fails: HTTP 500 with
/// `__type` = `error_type`, before it is forwarded upstream (or after, with `after_invoke`).
/// `contains` then matches the request body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Fault {
    #[serde(default)]
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_action: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    pub error_type: String,
    #[serde(default = "one")]
    pub times: u32,
    #[serde(default)]
    pub after_invoke: bool,
    #[serde(default)]
    pub until_cleared: bool,
}

fn one() -> u32 {
    1
}

/// A Lambda function implemented by an HTTP endpoint, registered at runtime with
/// `POST /_emulator/functions {"name": "my-fn", "url": "http://127.0.0.1:9000/my-fn"}`
/// (optional `"timeout_seconds"`, default 30). Answers `201`; a bad name or URL answers `400`.
/// Registering a name again replaces it, and an external function takes precedence over a
/// function binary of the same name (stub a template function).
///
/// Invoking it (by name or ARN, `arn:aws:lambda:us-east-1:123456789012:function:my-fn`, so a
/// state machine in the upstream emulator can use it as a Task `Resource`) POSTs the invocation
/// payload unchanged, as `application/json`, to `url`. The endpoint's answer maps to Invoke:
/// * a `2xx` status: its body is the function's result;
/// * any other status with a JSON body holding a string `errorType` (Lambda's error document,
///   `{"errorType": "StoreUnavailable", "errorMessage": "…"}`): a function error of that type,
///   the body passed through unchanged (Step Functions: `Error` = `errorType`, `Cause` = the body);
/// * any other status: a function error `Runtime.ExternalFunctionError`; no answer in time:
///   `Sandbox.Timedout`; unreachable: `Runtime.Unavailable`.
///
/// Injected faults ([`Fault`]) apply to external functions too.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExternalFunction {
    pub name: String,
    pub url: String,
    #[serde(default = "thirty")]
    pub timeout_seconds: u64,
}

fn thirty() -> u64 {
    30
}

impl ExternalFunction {
    /// Checks and normalizes a registration: the name may be given as an ARN.
    fn validated(mut self) -> Result<Self, String> {
        self.name = function_name(&self.name).to_string();
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("name must be a function name or ARN ([A-Za-z0-9_-]+)".into());
        }
        let url = reqwest::Url::parse(&self.url).ok();
        if !url.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host()) {
            return Err(format!("url {:?} must be an http(s) URL", self.url));
        }
        if self.timeout_seconds == 0 {
            return Err("timeout_seconds must be positive".into());
        }
        Ok(self)
    }

    async fn invoke(&self, http: &reqwest::Client, payload: Vec<u8>) -> Outcome {
        let sent = http
            .post(&self.url)
            .header("content-type", "application/json")
            .timeout(Duration::from_secs(self.timeout_seconds))
            .body(payload)
            .send()
            .await;
        let (status, body) = match sent {
            Ok(r) => {
                let status = r.status();
                match r.bytes().await {
                    Ok(b) => (status, b.to_vec()),
                    Err(e) => return external_failure(&self.url, &e),
                }
            }
            Err(e) => return external_failure(&self.url, &e),
        };
        if status.is_success() {
            return Outcome::Ok(body);
        }
        let error_type = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("errorType")?.as_str().map(str::to_string));
        match error_type {
            Some(error_type) => Outcome::FunctionError { error_type, body },
            None => function_error(
                "Runtime.ExternalFunctionError",
                &format!(
                    "{} answered {status}: {}",
                    self.url,
                    String::from_utf8_lossy(&body[..body.len().min(512)])
                ),
            ),
        }
    }
}

fn external_failure(url: &str, e: &reqwest::Error) -> Outcome {
    match e.is_timeout() {
        true => function_error("Sandbox.Timedout", &format!("{url} did not answer in time")),
        false => function_error("Runtime.Unavailable", &format!("{url}: {e}")),
    }
}

fn function_error(error_type: &str, message: &str) -> Outcome {
    Outcome::FunctionError {
        error_type: error_type.into(),
        body: serde_json::to_vec(&json!({"errorType": error_type, "errorMessage": message}))
            .unwrap_or_default(),
    }
}

/// The function name in a name, an ARN or a qualified name, as Invoke accepts them.
fn function_name(id: &str) -> &str {
    let name = id.rsplit_once(":function:").map_or(id, |(_, n)| n);
    name.split(':').next().unwrap_or(name)
}

/// The front's runtime test doubles: injected faults ([`Fault`]) and external functions
/// ([`ExternalFunction`]) — both change what an invocation does instead of running a binary.
#[derive(Clone, Default)]
pub struct Faults {
    pending: Arc<Mutex<Vec<Fault>>>,
    /// Every fault that fired, with the payload it hit (tests assert their fault really fired).
    fired: Arc<Mutex<Vec<serde_json::Value>>>,
    /// External functions by name.
    external: Arc<RwLock<BTreeMap<String, ExternalFunction>>>,
}

impl Faults {
    /// Registers (or replaces) an external function.
    pub fn add_external(&self, f: ExternalFunction) -> Result<(), String> {
        let f = f.validated()?;
        if let Ok(mut m) = self.external.write() {
            m.insert(f.name.clone(), f);
        }
        Ok(())
    }
    /// The external function an Invoke `FunctionName` (name or ARN) names, if any.
    pub fn external(&self, id: &str) -> Option<ExternalFunction> {
        self.external.read().ok()?.get(function_name(id)).cloned()
    }
    fn external_report(&self) -> serde_json::Value {
        let m = self.external.read().map(|m| m.clone()).unwrap_or_default();
        json!(m)
    }
    pub fn add(&self, f: Fault) {
        if let Ok(mut v) = self.pending.lock() {
            v.push(f);
        }
    }
    /// Adds a fault from the control API: it names a function or an AWS action, not both.
    fn add_checked(&self, f: Fault) -> Result<(), String> {
        match (f.function.is_empty(), &f.aws_action) {
            (false, None) | (true, Some(_)) => {
                self.add(f);
                Ok(())
            }
            _ => Err("a fault names either a function or an aws_action".into()),
        }
    }
    /// Drops the pending faults (of `function` only, when given); returns how many.
    pub fn clear(&self, function: Option<&str>) -> usize {
        let Ok(mut v) = self.pending.lock() else {
            return 0;
        };
        let before = v.len();
        v.retain(|f| function.is_some_and(|name| f.function != name));
        before - v.len()
    }
    pub fn report(&self) -> serde_json::Value {
        let pending = self.pending.lock().map(|v| v.clone()).unwrap_or_default();
        let fired = self.fired.lock().map(|v| v.clone()).unwrap_or_default();
        json!({"pending": pending, "fired": fired})
    }
    /// Consumes one matching fault of a function, if any.
    fn take(&self, function: &str, payload: &[u8]) -> Option<Fault> {
        let f = self.take_pending(payload, |f| {
            f.aws_action.is_none()
                && (f.function == function || function.ends_with(&format!("-{}", f.function)))
        })?;
        if let Ok(mut fired) = self.fired.lock() {
            fired.push(json!({"function": function, "error_type": f.error_type, "payload": String::from_utf8_lossy(payload)}));
        }
        Some(f)
    }
    /// Consumes one matching fault of an AWS action (`X-Amz-Target`), if any.
    fn take_action(&self, action: &str, body: &[u8]) -> Option<Fault> {
        let f = self.take_pending(body, |f| f.aws_action.as_deref() == Some(action))?;
        if let Ok(mut fired) = self.fired.lock() {
            fired.push(json!({"aws_action": action, "error_type": f.error_type, "payload": String::from_utf8_lossy(body)}));
        }
        Some(f)
    }
    fn take_pending(&self, payload: &[u8], target: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut v = self.pending.lock().ok()?;
        let text = String::from_utf8_lossy(payload);
        let i = v.iter().position(|f| {
            f.times > 0 && target(f) && f.contains.as_deref().is_none_or(|c| text.contains(c))
        })?;
        if v[i].until_cleared {
            return Some(v[i].clone());
        }
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
    /// SQS batches delivered a second time (tests assert duplication really happened).
    pub duplicated_batches: Arc<std::sync::atomic::AtomicU64>,
    /// Step Functions on the upstream (what [`super::sfn`] calls).
    pub sfn: aws_sdk_sfn::Client,
    /// Time spent per AWS action and per function invoke (`GET /_emulator/stats`).
    pub timings: Timings,
}

/// Requests through the front, by what they were: `X-Amz-Target` for AWS JSON actions
/// (`DynamoDB_20120810.GetItem`), `Lambda.Invoke <function>` for invokes. Where a run's time goes
/// in the emulator: `tokenops bench --api` prints it.
#[derive(Clone, Default)]
pub struct Timings(Arc<Mutex<BTreeMap<String, Timing>>>);

#[derive(Clone, Copy, Default, Serialize, Deserialize)]
pub struct Timing {
    pub count: u64,
    pub total_us: u64,
    pub max_us: u64,
}

impl Timings {
    fn record(&self, what: &str, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let t = m.entry(what.to_string()).or_default();
        t.count += 1;
        t.total_us += us;
        t.max_us = t.max_us.max(us);
    }

    pub fn snapshot(&self) -> BTreeMap<String, Timing> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// What an Invoke runs.
enum Target {
    External(ExternalFunction),
    Binary(Arc<super::lambda::Function>),
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::External(e) => &e.name,
            Target::Binary(f) => &f.name,
        }
    }
    async fn invoke(&self, http: &reqwest::Client, payload: Vec<u8>) -> Outcome {
        match self {
            Target::External(e) => e.invoke(http, payload).await,
            Target::Binary(f) => f.invoke(payload).await,
        }
    }
}

impl Front {
    /// Invokes by name or ARN (an external function first, then a binary), applying injected faults.
    pub async fn invoke(&self, function: &str, payload: Vec<u8>) -> Option<Outcome> {
        let target = match self.faults.external(function) {
            Some(e) => Target::External(e),
            None => Target::Binary(self.functions.get(function)?.clone()),
        };
        let name = target.name();
        if let Some(fault) = self.faults.take(name, &payload) {
            tracing::info!(function = %name, error_type = %fault.error_type, after_invoke = fault.after_invoke, "injected fault");
            if fault.after_invoke {
                let _ = target.invoke(&self.http, payload).await;
            }
            return Some(Outcome::FunctionError {
                body: serde_json::to_vec(&json!({"errorType": fault.error_type, "errorMessage": "injected by the emulator"})).unwrap_or_default(),
                error_type: fault.error_type,
            });
        }
        Some(target.invoke(&self.http, payload).await)
    }
}

fn response(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body)).unwrap_or_default()
}

pub fn json_response(status: u16, v: &serde_json::Value) -> Response {
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
            let started = std::time::Instant::now();
            let outcome = front.invoke(&name, body.to_vec()).await;
            front
                .timings
                .record(&format!("Lambda.Invoke {name}"), started.elapsed());
            return match outcome {
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
    // Step Functions (AWS JSON 1.0: `X-Amz-Target: AWSStepFunctions.<Action>`).
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !target.is_empty() {
        if let Some(fault) = front.faults.take_action(target, &body) {
            tracing::info!(action = %target, error_type = %fault.error_type, after_invoke = fault.after_invoke, "injected AWS fault");
            if fault.after_invoke {
                let _ = forward(&front, parts, body.to_vec()).await;
            }
            return json_response(
                500,
                &json!({"__type": fault.error_type, "message": "injected by the emulator"}),
            );
        }
    }
    if target == "AWSStepFunctions.StartSyncExecution" {
        let started = std::time::Instant::now();
        let r = super::sfn::start_sync_execution(&front, &body).await;
        front.timings.record(target, started.elapsed());
        return r;
    }
    match (parts.method.as_str(), path) {
        ("GET", "/_emulator/info") => {
            let mut info = (*front.info).clone();
            if let Some(m) = info.as_object_mut() {
                m.insert("external_functions".into(), front.faults.external_report());
            }
            return json_response(200, &info);
        }
        ("POST", "/_emulator/functions") => {
            let registered = serde_json::from_slice::<ExternalFunction>(&body)
                .map_err(|e| e.to_string())
                .and_then(|f| front.faults.add_external(f));
            return match registered {
                Ok(()) => json_response(201, &json!({"ok": true})),
                Err(e) => json_response(400, &json!({"message": format!("bad function: {e}")})),
            };
        }
        ("GET", "/_emulator/faults") => return json_response(200, &front.faults.report()),
        ("GET", "/_emulator/stats") => return json_response(200, &json!(front.timings.snapshot())),
        ("DELETE", "/_emulator/stats") => {
            front.timings.clear();
            return json_response(200, &json!({"cleared": true}));
        }
        ("POST", "/_emulator/faults") => {
            let added = serde_json::from_slice::<Fault>(&body)
                .map_err(|e| e.to_string())
                .and_then(|f| front.faults.add_checked(f));
            return match added {
                Ok(()) => json_response(201, &json!({"ok": true})),
                Err(e) => json_response(400, &json!({"message": format!("bad fault: {e}")})),
            };
        }
        ("DELETE", "/_emulator/faults") => {
            let function = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["function"].as_str().map(str::to_string));
            let cleared = front.faults.clear(function.as_deref());
            return json_response(200, &json!({ "cleared": cleared }));
        }
        ("POST" | "GET", "/_emulator/duplicate-sqs") => {
            use std::sync::atomic::Ordering::SeqCst;
            if parts.method == "POST" {
                let on = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["enabled"].as_bool())
                    .unwrap_or(true);
                front.duplicate_sqs.store(on, SeqCst);
            }
            return json_response(
                200,
                &json!({"enabled": front.duplicate_sqs.load(SeqCst),
                        "duplicated_batches": front.duplicated_batches.load(SeqCst)}),
            );
        }
        _ => {}
    }
    let what = if target.is_empty() {
        format!("{} {}", parts.method, path)
    } else {
        target.to_string()
    };
    let started = std::time::Instant::now();
    let r = forward(&front, parts, body.to_vec()).await;
    front.timings.record(&what, started.elapsed());
    r
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

    fn front() -> Front {
        Front {
            functions: Functions::new(vec![]),
            upstream: "http://127.0.0.1:9".into(),
            http: reqwest::Client::new(),
            faults: Faults::default(),
            info: Arc::new(json!({"stack": "t"})),
            duplicate_sqs: Arc::default(),
            duplicated_batches: Arc::default(),
            sfn: crate::emulator::sfn_client("http://127.0.0.1:9"),
            timings: Timings::default(),
        }
    }

    /// Through the front's handler: (status, whether it is a function error, body).
    async fn post(front: &Front, path: &str, body: serde_json::Value) -> (u16, bool, Vec<u8>) {
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .body(Body::from(body.to_string()))
            .unwrap();
        let r = handle(State(front.clone()), req).await;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = to_bytes(r.into_body(), 1 << 20).await.unwrap().to_vec();
        let function_error = headers.get("x-amz-function-error").is_some();
        (status, function_error, body)
    }

    #[test]
    fn external_functions_are_validated_and_found_by_name_or_arn() {
        let faults = Faults::default();
        let f = |name: &str, url: &str| ExternalFunction {
            name: name.into(),
            url: url.into(),
            timeout_seconds: 30,
        };
        faults
            .add_external(f(
                "arn:aws:lambda:us-east-1:123456789012:function:stub-1",
                "http://127.0.0.1:1/x",
            ))
            .unwrap();
        for id in [
            "stub-1",
            "arn:aws:lambda:us-east-1:123456789012:function:stub-1",
            "stub-1:$LATEST",
        ] {
            assert_eq!(faults.external(id).unwrap().name, "stub-1", "{id}");
        }
        assert!(faults.external("stub-2").is_none());
        assert!(faults.add_external(f("", "http://h/")).is_err());
        assert!(faults.add_external(f("a/b", "http://h/")).is_err());
        assert!(faults.add_external(f("ok", "ftp://h/")).is_err());
        assert!(faults.add_external(f("ok", "not a url")).is_err());
        assert!(faults.add_external(f("ok", "http://")).is_err());
        let mut zero = f("ok", "https://h/");
        zero.timeout_seconds = 0;
        assert!(faults.add_external(zero).is_err());
    }

    #[tokio::test]
    async fn external_functions_answer_invoke() {
        use axum::routing::post as route_post;
        let app = axum::Router::new()
            .route("/ok", route_post(|b: axum::body::Bytes| async move { b }))
            .route(
                "/err",
                route_post(|| async {
                    (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        r#"{"errorType":"StoreUnavailable","errorMessage":"down"}"#,
                    )
                }),
            )
            .route(
                "/plain",
                route_post(|| async { (axum::http::StatusCode::BAD_GATEWAY, "nope") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let front = front();
        for (name, path) in [("ok", "/ok"), ("err", "/err"), ("plain", "/plain")] {
            let (status, _, _) = post(
                &front,
                "/_emulator/functions",
                json!({"name": name, "url": format!("http://{addr}{path}")}),
            )
            .await;
            assert_eq!(status, 201);
        }
        // A dead port: nothing listens on the port the closed listener had.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_url = format!("http://{}/", dead.local_addr().unwrap());
        drop(dead);
        let (status, _, _) = post(
            &front,
            "/_emulator/functions",
            json!({"name": "dead", "url": dead_url}),
        )
        .await;
        assert_eq!(status, 201);
        let (status, _, body) = post(&front, "/_emulator/functions", json!({"name": "x"})).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

        let invoke = |name: &str| format!("/2015-03-31/functions/{name}/invocations");
        let (status, failed, body) = post(
            &front,
            &invoke("arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Aok"),
            json!({"run_id": "r1"}),
        )
        .await;
        assert_eq!((status, failed), (200, false));
        assert_eq!(body, br#"{"run_id":"r1"}"#.to_vec());
        let (status, failed, body) = post(&front, &invoke("err"), json!({})).await;
        assert_eq!((status, failed), (200, true), "a function error");
        assert_eq!(
            body,
            br#"{"errorType":"StoreUnavailable","errorMessage":"down"}"#.to_vec()
        );
        for (name, error_type) in [
            ("plain", "Runtime.ExternalFunctionError"),
            ("dead", "Runtime.Unavailable"),
        ] {
            let (status, failed, body) = post(&front, &invoke(name), json!({})).await;
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!((status, failed), (200, true));
            assert_eq!(doc["errorType"], error_type);
        }
        let (status, _, _) = post(&front, &invoke("missing"), json!({})).await;
        assert_eq!(status, 404);
        // Injected faults apply to external functions too.
        front.faults.add(Fault {
            function: "ok".into(),
            aws_action: None,
            contains: None,
            error_type: "Injected".into(),
            times: 1,
            after_invoke: false,
            until_cleared: false,
        });
        let (status, failed, body) = post(&front, &invoke("ok"), json!({})).await;
        assert_eq!((status, failed), (200, true));
        assert!(String::from_utf8_lossy(&body).contains("Injected"));
        let info = front.faults.external_report().as_object().map(|m| m.len());
        assert_eq!(info, Some(4));
    }

    #[test]
    fn faults_match_by_function_and_payload_and_are_consumed() {
        let faults = Faults::default();
        faults.add(Fault {
            function: "usage_receipt".into(),
            aws_action: None,
            contains: Some("run_a".into()),
            error_type: "StoreUnavailable".into(),
            times: 1,
            after_invoke: true,
            until_cleared: false,
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

    #[tokio::test]
    async fn an_aws_action_fault_fails_the_request_at_the_front() {
        let front = front();
        let (status, _, _) = post(
            &front,
            "/_emulator/faults",
            json!({"function": "x", "aws_action": "AmazonSQS.SendMessage", "error_type": "E"}),
        )
        .await;
        assert_eq!(status, 400, "a function or an action, not both");
        let (status, _, _) = post(
            &front,
            "/_emulator/faults",
            json!({"aws_action": "AmazonSQS.SendMessage", "error_type": "InternalError",
                   "contains": "run_a"}),
        )
        .await;
        assert_eq!(status, 201);
        let send = |body: &'static str| {
            Request::builder()
                .method("POST")
                .uri("/")
                .header("x-amz-target", "AmazonSQS.SendMessage")
                .body(Body::from(body))
                .unwrap()
        };
        // Another message: forwarded (the test upstream is unreachable: 502).
        let r = handle(State(front.clone()), send(r#"{"MessageBody":"run_b"}"#)).await;
        assert_eq!(r.status().as_u16(), 502);
        let r = handle(State(front.clone()), send(r#"{"MessageBody":"run_a"}"#)).await;
        assert_eq!(r.status().as_u16(), 500);
        let body = to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["__type"], "InternalError");
        // Consumed, and function faults are not action faults.
        let r = handle(State(front.clone()), send(r#"{"MessageBody":"run_a"}"#)).await;
        assert_eq!(r.status().as_u16(), 502);
        assert!(front.faults.take("tokenops-x", b"run_a").is_none());
        assert_eq!(
            front.faults.report()["fired"][0]["aws_action"],
            "AmazonSQS.SendMessage"
        );
    }

    #[test]
    fn a_fault_until_cleared_fires_until_it_is_cleared() {
        let faults = Faults::default();
        let fault = |function: &str| Fault {
            function: function.into(),
            aws_action: None,
            contains: None,
            error_type: "Internal".into(),
            times: 1,
            after_invoke: false,
            until_cleared: true,
        };
        faults.add(fault("settlement_receipt"));
        faults.add(fault("ledger"));
        for _ in 0..3 {
            let f = faults.take("tokenops-settlement_receipt", b"{}").unwrap();
            assert_eq!(f.error_type, "Internal");
        }
        assert_eq!(faults.clear(Some("settlement_receipt")), 1);
        assert!(faults.take("tokenops-settlement_receipt", b"{}").is_none());
        assert!(faults.take("tokenops-ledger", b"{}").is_some());
        assert_eq!(faults.clear(None), 1);
        assert!(faults.take("tokenops-ledger", b"{}").is_none());
        assert_eq!(faults.report()["fired"].as_array().unwrap().len(), 4);
    }
}
