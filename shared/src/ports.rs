//! The narrow capabilities handlers are generic over. Storage is [`crate::store::Store`]; the rest
//! are here. Each has one adapter per plane: local (embedded) and AWS.

use std::future::Future;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::model::RunMessage;

/// A received message; `receipt` identifies this delivery (a redelivery gets a new one).
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub message_id: String,
    pub receipt: String,
    pub body: RunMessage,
    pub receive_count: i64,
    pub sent_at: i64,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
pub struct QueueStats {
    pub queue: String,
    pub depth: i64,
    pub in_flight: i64,
    pub oldest_age_seconds: i64,
    pub dead_letter_depth: i64,
    pub max_receives: i64,
    pub visibility_timeout_seconds: i64,
}

/// The run queue: at-least-once delivery with a visibility timeout and a dead-letter queue.
pub trait RunQueue: Send + Sync + Clone + 'static {
    fn send(&self, msg: &RunMessage) -> impl Future<Output = Result<String, StoreError>> + Send;
    fn receive(&self, max: usize)
        -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send;
    fn ack(&self, d: &Delivery) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn stats(&self) -> impl Future<Output = Result<QueueStats, StoreError>> + Send;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Started {
    New,
    /// An execution with that name exists: the start was a duplicate.
    AlreadyExists,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redriven {
    /// The failed execution resumes from the state that failed.
    Yes,
    /// The execution is not failed (running, or redriven already): nothing to do.
    NotFailed,
    /// No execution by that name.
    NotFound,
}

/// Starts the orchestrated path (Step Functions in AWS, the local ASL engine here).
pub trait Orchestrator: Send + Sync + Clone + 'static {
    fn start(
        &self,
        name: &str,
        input: serde_json::Value,
    ) -> impl Future<Output = Result<Started, StoreError>> + Send;
    /// Resumes a failed execution from the state that failed, keeping what succeeded
    /// (Step Functions `RedriveExecution`; the local engine's equivalent).
    fn redrive(&self, name: &str) -> impl Future<Output = Result<Redriven, StoreError>> + Send;
}

/// Outbound HTTP for callbacks: returns the status code or a transport error.
pub trait CallbackSender: Send + Sync + Clone + 'static {
    fn post(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<u16, String>> + Send;
}

/// A settlement provider's side of the money path: told about a new payment request, it later
/// calls the confirmation webhook (signed with its secret).
pub trait SettlementProvider: Send + Sync + Clone + 'static {
    fn request_payment(
        &self,
        route: &crate::model::ProviderRoute,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// HTTP sender over reqwest (rustls); used by both planes.
#[derive(Clone)]
pub struct HttpSender {
    client: reqwest::Client,
}

impl HttpSender {
    pub fn new(timeout: std::time::Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // Redirects could bounce a callback to an address the URL check refused.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        HttpSender { client }
    }
}

impl CallbackSender for HttpSender {
    async fn post(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<u16, String> {
        let mut req = self.client.post(url).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    }
}
