//! One error type per layer, mapped at the edge:
//! - [`StoreError`]: the storage/queue adapters (DynamoDB).
//! - [`ApiError`]: what an HTTP caller sees, rendered as RFC 9457 problem+json.
//! - [`TaskError`]: what a Step Functions task or the SQS consumer reports; its `error_type` is the
//!   stable `errorType` the ASL's `Retry`/`Catch` `ErrorEquals` match.

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write's condition did not hold (another writer got there first, or the state moved on).
    #[error("condition failed")]
    ConditionFailed,
    /// The store could not be reached or throttled us; retrying may help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request itself (DynamoDB's `ValidationException`: a key over the
    /// size limit, an oversize item); retrying cannot help. The edge validates ids first, so
    /// this is a request we should not have sent — never "unavailable".
    #[error("store refused the request: {0}")]
    Invalid(String),
    /// An item did not have the shape we wrote; a bug or manual edit.
    #[error("corrupt item {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Problem type URIs are stable and documented in the OpenAPI document.
pub const PROBLEM_BASE: &str = "https://tokenops.dev/problems/";

/// RFC 9457 problem details (`type`, `title`, `status`, `detail`); `field` names the offending
/// input where there is one. `headers` are response headers the problem needs beside its body
/// (`WWW-Authenticate` on 401, `Allow` on 405, `Retry-After` on 503); they are not serialized.
#[derive(Debug, Clone, Serialize, PartialEq, thiserror::Error, schemars::JsonSchema)]
#[schemars(rename = "Problem")]
#[error("{status} {kind}: {detail}")]
pub struct ApiError {
    /// Serialized as `type`, the stable URI [`PROBLEM_BASE`]`<kind>` (see [`ApiError::type_uri`]).
    #[serde(rename = "type", serialize_with = "serialize_type_uri")]
    pub kind: &'static str,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Boxed and optional: most problems carry none, and `Result<_, ApiError>` stays small.
    #[serde(skip)]
    pub headers: Option<Box<Vec<(String, String)>>>,
}

fn serialize_type_uri<S: serde::Serializer>(kind: &&'static str, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{PROBLEM_BASE}{kind}"))
}

/// The challenge every 401 carries (RFC 9110 §11.6.1; the scheme is RFC 6750's).
pub const BEARER_CHALLENGE: &str = r#"Bearer realm="tokenops""#;

/// Seconds a 503 asks the caller to wait before retrying (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 1;

impl ApiError {
    pub fn new(
        status: u16,
        kind: &'static str,
        title: &str,
        detail: impl Into<String>,
        field: Option<&str>,
    ) -> Self {
        ApiError {
            status,
            kind,
            title: title.to_string(),
            detail: detail.into(),
            field: field.map(str::to_string),
            headers: None,
        }
    }
    /// The problem's `type`: [`PROBLEM_BASE`] followed by its kind.
    pub fn type_uri(&self) -> String {
        format!("{PROBLEM_BASE}{}", self.kind)
    }
    /// Adds a response header (replacing one of the same name, case-insensitively).
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        let headers = self.headers.get_or_insert_with(Default::default);
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
    /// The response headers this problem carries.
    pub fn headers(&self) -> &[(String, String)] {
        self.headers
            .as_deref()
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
    /// A response header this problem carries.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn bad_request(field: &str, detail: impl Into<String>) -> Self {
        Self::new(
            400,
            "malformed-request",
            "Malformed request",
            detail,
            Some(field),
        )
    }
    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Self::new(422, "invalid-field", "Invalid field", detail, Some(field))
    }
    pub fn not_found(field: &str, id: &str) -> Self {
        // The id is echoed only if it is short and printable, so a probe can't reflect junk back.
        let shown: String = id
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(80)
            .collect();
        Self::new(
            404,
            "not-found",
            "Not found",
            format!("no {field} '{shown}' is visible to this agent"),
            Some(field),
        )
    }
    /// No usable credentials: 401 with the bare Bearer challenge.
    pub fn unauthorized(detail: &str) -> Self {
        Self::new(
            401,
            "unauthorized",
            "Unauthorized",
            detail,
            Some("authorization"),
        )
        .with_header("www-authenticate", BEARER_CHALLENGE)
    }
    /// A bearer key was presented but is not valid: the challenge says so (RFC 6750 §3.1).
    pub fn invalid_token(detail: &str) -> Self {
        Self::unauthorized(detail).with_header(
            "www-authenticate",
            format!(r#"{BEARER_CHALLENGE}, error="invalid_token""#),
        )
    }
    pub fn conflict(kind: &'static str, field: &str, detail: impl Into<String>) -> Self {
        Self::new(409, kind, "Conflict", detail, Some(field))
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "payload-too-large",
            "Payload too large",
            format!("request body exceeds {limit} bytes"),
            Some("body"),
        )
    }
    /// 405 with `Allow` listing the methods the path does accept (RFC 9110 §15.5.6).
    pub fn method_not_allowed(allowed: &[&str]) -> Self {
        Self::new(
            405,
            "method-not-allowed",
            "Method not allowed",
            format!("this route accepts {}", allowed.join(", ")),
            Some("method"),
        )
        .with_header("allow", allowed.join(", "))
    }
    /// 503 with `Retry-After` ([`RETRY_AFTER_SECS`]); `with_header("retry-after", …)` overrides it.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(503, "unavailable", "Service unavailable", detail, None)
            .with_header("retry-after", RETRY_AFTER_SECS.to_string())
    }
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(500, "internal", "Internal error", detail, None)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // Reaching the edge with a bare condition failure means a concurrent writer won: retryable.
            StoreError::ConditionFailed => ApiError::conflict(
                "concurrent-update",
                "state",
                "the object changed concurrently; retry the request",
            ),
            // SDK and engine messages go to the log; the caller learns what to do.
            StoreError::Unavailable(d) => {
                tracing::warn!(error = %d, "store unavailable");
                ApiError::unavailable(
                    "the store is temporarily unavailable; retry after the Retry-After delay \
                     (a POST with the same Idempotency-Key)",
                )
            }
            // The engine's message may quote the request; it goes to the log, not the caller.
            StoreError::Invalid(d) => {
                tracing::warn!(error = %d, "store refused a request as invalid");
                ApiError::bad_request("request", "the request names an object that cannot exist")
            }
            StoreError::Corrupt { key, reason } => {
                tracing::error!(key, reason, "stored item unreadable");
                ApiError::internal(
                    "a stored object could not be read; the operator has been told in the logs",
                )
            }
        }
    }
}

/// A Step Functions task / SQS consumer failure with a stable `errorType`.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("run {0} not found")]
    RunNotFound(String),
    #[error("run {run_id} is {state}; {stage} cannot act on it")]
    InvalidTransition {
        run_id: String,
        state: String,
        stage: &'static str,
    },
    #[error("malformed task input: {0}")]
    BadInput(String),
    #[error("callback delivery failed after {attempts} attempts: {last_error}")]
    CallbackDeliveryFailed { attempts: u32, last_error: String },
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl TaskError {
    /// The `errorType` Step Functions sees; the ASL matches on these names.
    pub fn error_type(&self) -> &'static str {
        match self {
            TaskError::RunNotFound(_) => "RunNotFound",
            TaskError::InvalidTransition { .. } => "InvalidTransition",
            TaskError::BadInput(_) => "BadInput",
            TaskError::CallbackDeliveryFailed { .. } => "CallbackDeliveryFailed",
            TaskError::StoreUnavailable(_) => "StoreUnavailable",
            TaskError::Internal(_) => "Internal",
        }
    }
    pub fn retryable(&self) -> bool {
        matches!(self, TaskError::StoreUnavailable(_))
    }
}

impl From<StoreError> for TaskError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(d) => TaskError::StoreUnavailable(d),
            other => TaskError::Internal(other.to_string()),
        }
    }
}

impl From<ApiError> for TaskError {
    fn from(e: ApiError) -> Self {
        if e.status == 404 {
            TaskError::RunNotFound(e.detail)
        } else if e.status == 503 {
            TaskError::StoreUnavailable(e.detail)
        } else {
            TaskError::Internal(e.detail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_document_has_rfc9457_members_and_no_header_fields() {
        let e = ApiError::not_found("run_id", "run_x");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["status"], 404);
        assert_eq!(v["type"], "https://tokenops.dev/problems/not-found");
        assert_eq!(v["field"], "run_id");
        assert!(v.get("status_code").is_none(), "{v}");
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["detail", "field", "status", "title", "type"]);
        let v = serde_json::to_value(ApiError::unavailable("x")).unwrap();
        assert!(v.get("headers").is_none() && v.get("kind").is_none(), "{v}");
    }

    #[test]
    fn problems_carry_their_response_headers() {
        assert_eq!(
            ApiError::unauthorized("no key").header("WWW-Authenticate"),
            Some(r#"Bearer realm="tokenops""#)
        );
        let e = ApiError::invalid_token("unknown access key");
        assert_eq!(
            e.header("www-authenticate"),
            Some(r#"Bearer realm="tokenops", error="invalid_token""#)
        );
        assert_eq!(e.headers().len(), 1, "replaced, not added: {:?}", e.headers);
        assert_eq!(
            ApiError::method_not_allowed(&["GET", "POST"]).header("allow"),
            Some("GET, POST")
        );
        let e = ApiError::from(StoreError::Unavailable("throttled".into()));
        assert_eq!((e.status, e.header("retry-after")), (503, Some("1")));
        let e = e.with_header("Retry-After", "7");
        assert_eq!((e.header("retry-after"), e.headers().len()), (Some("7"), 1));
        // A request the store refuses as invalid is the caller's, and never "unavailable".
        let e = ApiError::from(StoreError::Invalid("ValidationException".into()));
        assert_eq!((e.status, e.header("retry-after")), (400, None));
        assert!(!TaskError::from(StoreError::Invalid("x".into())).retryable());
    }
}
