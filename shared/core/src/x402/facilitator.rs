//! The facilitator port (x402's `POST /verify` and `POST /settle`) and its HTTP adapter.

use std::future::Future;
use std::time::Duration;

use super::{
    FacilitatorRequest, PaymentPayload, PaymentRequirements, SettleResponse, VerifyResponse,
    X402_VERSION,
};

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum FacilitatorError {
    /// The request never reached the facilitator (connection refused, DNS): nothing happened.
    #[error("facilitator unreachable: {0}")]
    Unreachable(String),
    /// The request may have been acted on (timeout after sending, a 5xx, an unreadable answer):
    /// for a settle, the payment's outcome is unknown until the chain says.
    #[error("facilitator outcome unknown: {0}")]
    Unknown(String),
}

pub trait Facilitator: Send + Sync + Clone + 'static {
    fn verify(
        &self,
        payload: &PaymentPayload,
        requirements: &PaymentRequirements,
    ) -> impl Future<Output = Result<VerifyResponse, FacilitatorError>> + Send;
    fn settle(
        &self,
        payload: &PaymentPayload,
        requirements: &PaymentRequirements,
    ) -> impl Future<Output = Result<SettleResponse, FacilitatorError>> + Send;
}

/// An x402 facilitator over HTTP (JSON; a refused payment is a 200 with `isValid`/`success`
/// false, as the official SDKs' facilitators answer).
#[derive(Clone)]
pub struct HttpFacilitator {
    http: reqwest::Client,
    base: String,
}

impl HttpFacilitator {
    /// Fails only if the HTTP client cannot be built.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(HttpFacilitator {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        payload: &PaymentPayload,
        requirements: &PaymentRequirements,
    ) -> Result<T, FacilitatorError> {
        let body = FacilitatorRequest {
            x402_version: X402_VERSION,
            payment_payload: payload.clone(),
            payment_requirements: requirements.clone(),
        };
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_builder() {
                    FacilitatorError::Unreachable(e.to_string())
                } else {
                    FacilitatorError::Unknown(e.to_string())
                }
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| FacilitatorError::Unknown(e.to_string()))?;
        if !status.is_success() {
            return Err(FacilitatorError::Unknown(format!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>()
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| FacilitatorError::Unknown(format!("{path}: unreadable answer: {e}")))
    }
}

impl Facilitator for HttpFacilitator {
    async fn verify(
        &self,
        payload: &PaymentPayload,
        requirements: &PaymentRequirements,
    ) -> Result<VerifyResponse, FacilitatorError> {
        self.post("/verify", payload, requirements).await
    }
    async fn settle(
        &self,
        payload: &PaymentPayload,
        requirements: &PaymentRequirements,
    ) -> Result<SettleResponse, FacilitatorError> {
        self.post("/settle", payload, requirements).await
    }
}
