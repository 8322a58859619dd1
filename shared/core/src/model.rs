//! Every loop object as a serde type with a JSON Schema. Field names and values from the seeds are
//! kept exactly (`package_type`, `receipt_type`, `object_type`, `evidence_status`, …); we add ids,
//! links and timestamps.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::evidence::{EvidenceBundle, EvidenceStatus, Review};
use crate::run_state::RunState;

pub const OPERATING_TOOL: &str = "tokenops";
pub const LOOP_TYPE: &str = "tokenops_full_loop_reference_run";
pub const CLIENT_DELIVERABLE: &str = "TokenOps Result Package v1";

/// The seed's `path`, in order. Function crates are named after these.
pub const PATH: [&str; 14] = [
    "onboarding",
    "trust",
    "quote",
    "provider_route",
    "credit_entitlement",
    "run_contract",
    "queue",
    "tokenops_execution",
    "result_contract",
    "settlement_receipt",
    "usage_receipt",
    "callback",
    "ledger",
    "attestation",
];

// ---------- 1–2: onboarding and trust ----------

/// `POST /agents` body.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentManifest {
    pub name: String,
    /// An email address.
    #[schemars(length(max = 254))]
    pub owner_contact: String,
    #[schemars(length(min = 1, max = 16))]
    pub requested_tools: Vec<String>,
    /// https and public (the local runtime also allows http(s) to loopback).
    #[schemars(length(max = 2048))]
    pub callback_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub description: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct OnboardingRecord {
    pub object_type: String, // "agent_onboarding"
    pub agent_id: String,
    pub onboarding_status: String, // "trust_review_passed" | "trust_review_failed"
    pub manifest: AgentManifest,
    pub trust_profile_id: String,
    pub credentials_claimed: bool,
    pub created_at: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TrustLimits {
    pub max_run_credits: i64,
    pub max_entitlement_credits: i64,
    pub allowed_tools: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TrustCheck {
    pub rule: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TrustProfile {
    pub object_type: String, // "trust_profile"
    pub trust_profile_id: String,
    pub agent_id: String,
    pub status: String, // "active" | "rejected"
    pub tier: String,   // "sandbox"
    pub limits: TrustLimits,
    pub checks: Vec<TrustCheck>,
    pub reviewed_at: String,
}

/// `GET /agents/{id}`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AgentView {
    pub agent_id: String,
    pub onboarding: OnboardingRecord,
    pub trust_profile: TrustProfile,
}

/// `POST /agents` response: the claim token is shown once.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct OnboardingResponse {
    pub agent_id: String,
    pub onboarding_status: String,
    pub trust_profile_id: String,
    /// Shown once: absent when an `Idempotency-Key` replays this response.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim_token: String,
    pub links: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CredentialClaim {
    pub claim_token: String,
}

/// Delivered once; only hashes of the access key are kept.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct CredentialEnvelope {
    pub object_type: String, // "credential_envelope"
    pub agent_id: String,
    pub trust_profile_id: String,
    pub access_key: String,
    pub access_key_id: String,
    pub callback_signing_secret: String,
    pub signature_scheme: String, // "standard-webhooks-v1"
    pub issued_at: String,
}

// ---------- 3–5: quote, provider route, credit entitlement ----------

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    pub requested_tool: String,
    pub requested_capability: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Quote {
    pub object_type: String, // "quote"
    pub quote_id: String,
    pub agent_id: String,
    pub trust_profile_id: String,
    pub requested_tool: String,
    pub requested_capability: String,
    pub price_credits: i64,
    pub expires_at: String,
    pub created_at: String,
    /// The price in a token, when x402 payments are accepted (pay it on `POST /runs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x402: Option<crate::x402::PaymentMethod>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SettlementRequest {
    pub quote_id: String,
    pub provider: String,
    /// Credits to buy; at least the quote's price (default: the price).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100_000))]
    pub credits: Option<i64>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct PaymentRequest {
    pub object_type: String, // "payment_request"
    pub payment_request_id: String,
    pub provider: String,
    pub settlement_reference: String,
    pub amount_credits: i64,
    pub status: String, // "awaiting_confirmation"
    pub confirmation_endpoint: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ProviderRoute {
    pub object_type: String, // "provider_route"
    pub settlement_id: String,
    pub agent_id: String,
    pub quote_id: String,
    pub provider: String,
    pub credits: i64,
    pub payment_request: PaymentRequest,
    pub credit_entitlement_id: String,
    /// "awaiting_confirmation" | "confirmed" | "failed"; x402: "settlement_pending" until the
    /// payment's outcome is known.
    pub status: String,
    pub created_at: String,
    /// x402 only: the on-chain payment (network, payer, transaction once settled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<crate::x402::X402Payment>,
    /// Why the settlement failed (nothing was charged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

/// The provider's webhook body (signed by the provider).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfirmation {
    pub provider_event_id: String,
    pub settlement_reference: String,
    pub payment_request_id: String,
    pub amount_credits: i64,
    pub status: String, // "paid"
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SettlementConfirmation {
    pub object_type: String, // "settlement_confirmation"
    pub confirmation_id: String,
    pub settlement_id: String,
    pub provider: String,
    pub provider_event_id: String,
    pub amount_credits: i64,
    pub signature_verified: bool,
    pub funding_transfer_id: String,
    pub confirmed_at: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
pub struct Balances {
    pub funded: i64,
    pub available: i64,
    pub held: i64,
    pub captured: i64,
    pub released: i64,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct CreditEntitlement {
    pub object_type: String, // "credit_entitlement"
    pub credit_entitlement_id: String,
    pub agent_id: String,
    pub settlement_id: String,
    pub quote_id: String,
    pub provider: String,
    pub status: String, // "awaiting_funding" | "funded"
    pub balances: Balances,
    pub created_at: String,
}

// ---------- 6–7: run contract and queue ----------

/// `POST /runs` body: the seed's run fields + evidence + callback URL.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub trust_profile_id: String,
    pub quote_id: String,
    /// The funded entitlement that pays; omit it to pay this run with x402 (a 402 says how).
    #[serde(default)]
    pub credit_entitlement_id: Option<String>,
    pub requested_tool: String,
    pub requested_capability: String,
    pub evidence: EvidenceBundle,
    #[serde(default)]
    pub callback_url: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct RunContract {
    pub object_type: String, // "run_contract"
    pub run_contract_id: String,
    pub run_id: String,
    pub agent_id: String,
    pub trust_profile_id: String,
    pub quote_id: String,
    pub credit_entitlement_id: String,
    pub settlement_id: String,
    pub provider: String,
    pub requested_tool: String,
    pub requested_capability: String,
    pub credits_held: i64,
    pub hold_transfer_id: String,
    pub callback_url: String,
    pub evidence_digest: String,
    pub created_at: String,
}

/// `POST /runs` response (202): the run is stored and queued.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct RunAccepted {
    pub run_id: String,
    pub state: RunState,
    pub run_contract: RunContract,
    pub links: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct QueueState {
    pub object_type: String, // "queue_state"
    pub queue_state_id: String,
    pub run_id: String,
    pub status: String, // "dispatched"
    pub message_id: String,
    pub receive_count: i64,
    pub execution_name: String,
    pub queued_at: String,
    pub dispatched_at: String,
}

/// What the queue carries.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
pub struct RunMessage {
    pub run_id: String,
    /// 0 for the first execution; n for the n-th replay.
    #[serde(default)]
    pub replay: u32,
    /// n > 0: redrive the (failed) execution for the n-th time instead of starting it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redrive: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl RunMessage {
    /// Execution names are derived from the run, so a redelivered message cannot start a second one.
    pub fn execution_name(&self) -> String {
        if self.replay == 0 {
            self.run_id.clone()
        } else {
            format!("{}-replay-{}", self.run_id, self.replay)
        }
    }
}

/// What the queue consumer records after each batch.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct QueueHeartbeat {
    pub at: String,
    pub last_batch: u64,
    pub last_batch_failures: u64,
}

/// `GET /queue`, scoped to the caller: its own runs waiting for dispatch, the queue's service
/// figures that carry no other agent's traffic, and the consumer's last heartbeat (null before
/// the first).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct QueueMonitor {
    pub runs: RunsWaiting,
    pub queue: QueueService,
    pub consumer_heartbeat: Option<QueueHeartbeat>,
}

/// The caller's runs waiting for dispatch.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct RunsWaiting {
    pub pending: i64,
    pub oldest_age_seconds: i64,
}

/// The run queue's name, redrive policy and dead-letter depth (a health signal).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct QueueService {
    pub queue: String,
    pub dead_letter_depth: i64,
    pub max_receives: i64,
    pub visibility_timeout_seconds: i64,
}

// ---------- 8: execution, exceptions, replay ----------

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ResultPackage {
    pub package_type: String, // "tokenops_result_package"
    pub operating_tool: String,
    pub evidence_status: EvidenceStatus,
    pub evidence_score: u8,
    pub received_inputs: u32,
    pub uploaded_files: Vec<String>,
    pub settlement_reference: String,
    pub usage_receipt: String,
    pub callback_delivery: String, // "ready"
    pub client_deliverable: String,
    pub result_id: String,
    pub run_id: String,
    pub review: Review,
    pub created_at: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ExceptionTicket {
    pub object_type: String, // "agent_exception_ticket"
    pub requested_tool: String,
    pub exception_type: String, // "evidence_gap"
    pub status: String,         // "waiting_on_requesting_agent" | "resolved"
    pub missing_items: Vec<String>,
    pub safe_to_replay: bool,
    pub exception_id: String,
    pub run_id: String,
    pub evidence_score: u8,
    pub supply_evidence_url: String,
    pub created_at: String,
    /// `stage_failure` tickets: the stage whose execution failed for good, and its error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to do about it (`POST /runs/{id}/redrive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive_url: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvidenceSupplement {
    pub evidence: EvidenceBundle,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ReplayPackage {
    pub object_type: String, // "replay_package"
    pub replay_id: String,
    pub run_id: String,
    pub exception_id: String,
    pub resume_from: String, // "tokenops_execution"
    pub known_state: serde_json::Value,
    pub changes: serde_json::Value,
    pub safe_to_replay: bool,
    pub replay: u32,
    pub created_at: String,
}

// ---------- 9–14 ----------

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ResultContract {
    pub object_type: String, // "result_contract"
    pub result_contract_id: String,
    pub run_id: String,
    pub result_package_id: String,
    pub result_url: String,
    pub client_deliverable: String,
    pub media_type: String,
    pub digests: BTreeMap<String, String>,
    pub delivered_at: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SettlementReceipt {
    pub object_type: String, // "settlement_receipt"
    pub receipt_id: String,
    pub run_id: String,
    pub settlement_id: String,
    pub settlement_reference: String,
    pub provider: String,
    pub credit_entitlement_id: String,
    pub credits_cost: i64,
    pub funding_transfer_id: String,
    pub hold_transfer_id: String,
    pub issued_at: String,
    /// x402: the on-chain payment that funded the credits (network, transaction, payer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<crate::x402::X402Payment>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct UsageReceipt {
    pub receipt_id: String,
    pub receipt_type: String, // "tokenops_usage_receipt"
    pub operating_tool: String,
    pub credits_debited: i64,
    pub remaining_credits: i64,
    pub evidence_status: EvidenceStatus,
    pub result_status: String,
    pub callback_status: String,
    pub run_id: String,
    pub credit_entitlement_id: String,
    pub capture_transfer_id: String,
    pub result_url: String,
    pub issued_at: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct CallbackAttempt {
    pub attempt: u32,
    pub at: String,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// The body POSTed to the agent's callback URL.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct CallbackPayload {
    pub event_type: String, // "tokenops.run.completed"
    pub run_id: String,
    pub state: String,
    pub next_action: String,
    pub result_package_url: String,
    pub receipts: BTreeMap<String, String>,
    /// `tokenops.run.failed` only: the stage that failed, the error, and the exception ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<CallbackFailure>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct CallbackFailure {
    pub stage: String,
    pub error: String,
    pub exception_url: String,
    pub hold_released: bool,
    pub redrive_url: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct CallbackRecord {
    pub object_type: String, // "callback_delivery"
    pub callback_id: String,
    pub run_id: String,
    pub url: String,
    pub webhook_id: String,
    pub payload: CallbackPayload,
    pub payload_digest: String,
    pub status: String, // "delivered" | "failed"
    pub attempts: Vec<CallbackAttempt>,
    pub updated_at: String,
}

/// `GET /ledger`: the caller's chain (optionally one run's entries) and its head.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct LedgerView {
    pub chain_id: String,
    pub head_hash: Option<String>,
    pub entries: Vec<crate::proof::ledger::LedgerEntry>,
}

/// `GET /keys`: the attestation verification keys.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct KeySet {
    pub keys: Vec<crate::proof::dsse::PublicKeyInfo>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Attestation {
    pub object_type: String, // "attestation"
    pub attestation_id: String,
    pub run_id: String,
    pub keyid: String,
    pub envelope: crate::proof::dsse::Envelope,
    /// The envelope's payload, decoded, for readers; `tokenops verify attestation` rejects an
    /// attestation whose copy differs from the signed payload.
    pub statement: crate::proof::dsse::Statement,
    pub created_at: String,
}

// ---------- the run: the full loop payload ----------

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ObjectLink {
    pub id: String,
    pub object_type: String,
    pub url: String,
    /// sha256 of the object's canonical JSON when it was written (what the ledger and attestation bind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `GET /runs/{id}`: the seed's envelope plus a link to every object the run produced.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FullLoopPayload {
    pub loop_type: String,
    pub run_id: String,
    pub operating_tool: String,
    pub path: Vec<String>,
    pub state: RunState,
    pub next_action: String,
    pub agent_id: String,
    /// Stage name → object link(s), in path order.
    pub objects: BTreeMap<String, Vec<ObjectLink>>,
    pub credits: i64,
    pub replays: u32,
    pub attested: bool,
    pub created_at: String,
    pub updated_at: String,
    /// Set while the run is `failed`: which stage failed, with what, and what was undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<RunFailure>,
    /// How often a failed run was redriven.
    #[serde(default)]
    pub redrives: u32,
}

/// A failed execution, as the queue function (from a synchronous execution's end) or the local
/// orchestrator reports it (the failure handler's input).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FailedExecution {
    /// The execution name: the run id, or `<run>-replay-<n>`.
    pub execution: String,
    pub error: String,
    pub cause: String,
}

/// Why a run is `failed` (its execution failed for good) and what the failure handler did.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct RunFailure {
    /// The stage whose task failed (the one a redrive restarts).
    pub stage: String,
    /// The error type (`errorType`) and a cause a person can read.
    pub error: String,
    pub cause: String,
    /// The state the run was in when it failed; a redrive puts it back there.
    pub failed_from: RunState,
    /// The orchestrator's execution that failed (the one a redrive resumes).
    pub execution: String,
    pub exception_id: String,
    /// Whether the failure released the run's hold (false when it was already captured).
    pub hold_released: bool,
    pub failed_at: String,
    /// Whether the ticket and the release are in the ledger yet.
    pub ledgered: bool,
    /// The `tokenops.run.failed` callback: `pending`, `delivered` or `failed`.
    pub callback_status: String,
}

impl FullLoopPayload {
    pub fn link(
        &mut self,
        stage: &str,
        id: &str,
        object_type: &str,
        url: String,
        sha256: Option<String>,
    ) {
        let links = self.objects.entry(stage.to_string()).or_default();
        match links.iter_mut().find(|l| l.id == id) {
            Some(l) => l.sha256 = sha256.or(l.sha256.take()),
            None => links.push(ObjectLink {
                id: id.into(),
                object_type: object_type.into(),
                url,
                sha256,
            }),
        }
    }
    pub fn first_link(&self, stage: &str) -> Option<&ObjectLink> {
        self.objects.get(stage).and_then(|l| l.first())
    }
    pub fn first_id(&self, stage: &str) -> Option<&str> {
        self.objects
            .get(stage)
            .and_then(|l| l.first())
            .map(|l| l.id.as_str())
    }
    pub fn refresh_next_action(&mut self) {
        self.next_action = self.state.next_action(self.attested).to_string();
    }
}

/// Task input/output for the Step Functions stages.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TaskInput {
    pub run_id: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TaskOutput {
    pub run_id: String,
    pub stage: String,
    pub object_id: String,
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_status: Option<String>,
}

/// JSON Schemas of every loop object, by name (served at `/schemas/{name}`).
pub fn schemas() -> BTreeMap<&'static str, serde_json::Value> {
    fn s<T: JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
    }
    BTreeMap::from([
        ("agent_manifest", s::<AgentManifest>()),
        ("agent_onboarding", s::<OnboardingRecord>()),
        ("trust_profile", s::<TrustProfile>()),
        ("credential_envelope", s::<CredentialEnvelope>()),
        ("quote_request", s::<QuoteRequest>()),
        ("quote", s::<Quote>()),
        ("settlement_request", s::<SettlementRequest>()),
        ("provider_route", s::<ProviderRoute>()),
        ("payment_request", s::<PaymentRequest>()),
        ("provider_confirmation", s::<ProviderConfirmation>()),
        ("settlement_confirmation", s::<SettlementConfirmation>()),
        ("credit_entitlement", s::<CreditEntitlement>()),
        ("run_request", s::<RunRequest>()),
        ("run_contract", s::<RunContract>()),
        ("queue_state", s::<QueueState>()),
        ("evidence_bundle", s::<EvidenceBundle>()),
        ("tokenops_result_package", s::<ResultPackage>()),
        ("agent_exception_ticket", s::<ExceptionTicket>()),
        ("evidence_supplement", s::<EvidenceSupplement>()),
        ("replay_package", s::<ReplayPackage>()),
        ("result_contract", s::<ResultContract>()),
        ("settlement_receipt", s::<SettlementReceipt>()),
        ("tokenops_usage_receipt", s::<UsageReceipt>()),
        ("callback_payload", s::<CallbackPayload>()),
        ("callback_delivery", s::<CallbackRecord>()),
        ("ledger_entry", s::<crate::proof::ledger::LedgerEntry>()),
        ("attestation", s::<Attestation>()),
        ("full_loop_payload", s::<FullLoopPayload>()),
    ])
}
