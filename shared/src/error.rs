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
    /// An item did not have the shape we wrote; a bug or manual edit.
    #[error("corrupt item {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Problem type URIs are stable and documented in the OpenAPI document.
pub const PROBLEM_BASE: &str = "https://tokenops.dev/problems/";

/// RFC 9457 problem details; `field` names the offending input where there is one.
#[derive(Debug, Clone, Serialize, PartialEq, thiserror::Error, schemars::JsonSchema)]
#[schemars(rename = "Problem")]
#[error("{status} {kind}: {detail}")]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    #[serde(skip)]
    pub kind: &'static str,
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status_code: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

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
            type_uri: format!("{PROBLEM_BASE}{kind}"),
            title: title.to_string(),
            status_code: status,
            detail: detail.into(),
            field: field.map(str::to_string),
        }
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
    pub fn unauthorized(detail: &str) -> Self {
        Self::new(
            401,
            "unauthorized",
            "Unauthorized",
            detail,
            Some("authorization"),
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
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "method-not-allowed",
            "Method not allowed",
            "this route does not accept that method",
            None,
        )
    }
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(503, "unavailable", "Service unavailable", detail, None)
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
            StoreError::Unavailable(d) => ApiError::unavailable(d),
            StoreError::Corrupt { key, reason } => {
                ApiError::internal(format!("stored item {key} is unreadable: {reason}"))
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
