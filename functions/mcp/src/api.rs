//! The API as the MCP tools call it: one request, its status and JSON body. Over HTTP for stdio
//! (`tokenops mcp --api URL`); the same port lets a server that holds the handlers dispatch in
//! process.

use std::future::Future;

use serde_json::Value;
use tokenops::x402;

/// An answer of the API: its status and body (problem+json for an error).
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// `PAYMENT-REQUIRED` on a 402 (x402): what to pay, for the tool's payment-required result.
    pub payment_required: Option<String>,
    /// `PAYMENT-RESPONSE` after a payment: the settlement, for the result's `_meta`.
    pub payment_response: Option<String>,
}

/// One API request: what a tool call becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Value>,
    /// Sent as `Idempotency-Key` on a POST.
    pub idempotency_key: Option<String>,
    /// Sent as `PAYMENT-SIGNATURE` (x402): the payment the MCP client put in `_meta`.
    pub payment_signature: Option<String>,
}

impl Request {
    pub fn get(path: String) -> Self {
        Request {
            method: "GET",
            path,
            body: None,
            idempotency_key: None,
            payment_signature: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the TokenOps API at {base} could not be reached: {reason}")]
pub struct Unreachable {
    pub base: String,
    pub reason: String,
}

pub trait Api: Clone + Send + Sync + 'static {
    /// `key`: the agent's access key, sent as a bearer token.
    fn send(
        &self,
        req: &Request,
        key: Option<&str>,
    ) -> impl Future<Output = Result<Reply, Unreachable>> + Send;
}

/// The API over HTTP.
#[derive(Clone)]
pub struct HttpApi {
    base: String,
    http: reqwest::Client,
}

impl HttpApi {
    pub fn new(base: &str) -> Result<Self, reqwest::Error> {
        Ok(HttpApi {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
        })
    }
}

impl Api for HttpApi {
    async fn send(&self, req: &Request, key: Option<&str>) -> Result<Reply, Unreachable> {
        let unreachable = |reason: String| Unreachable {
            base: self.base.clone(),
            reason,
        };
        let url = format!("{}{}", self.base, req.path);
        let mut r = match req.method {
            "POST" => self.http.post(&url),
            _ => self.http.get(&url),
        };
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        if let Some(k) = &req.idempotency_key {
            r = r.header("idempotency-key", k);
        }
        if let Some(p) = &req.payment_signature {
            r = r.header(x402::HEADER_SIGNATURE, p);
        }
        if let Some(b) = &req.body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let payment_required = header(x402::HEADER_REQUIRED);
        let payment_response = header(x402::HEADER_RESPONSE);
        let bytes = resp.bytes().await.map_err(|e| unreachable(e.to_string()))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                unreachable(format!(
                    "{} {} answered {status} with no JSON: {e}",
                    req.method, req.path
                ))
            })?
        };
        Ok(Reply {
            status,
            body,
            payment_required,
            payment_response,
        })
    }
}
