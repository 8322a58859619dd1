//! Runtime configuration and the per-process context handlers receive.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::backoff::Backoff;
use crate::proof::signer::Signer;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay_ms: u64,
}

pub struct Config {
    /// Base of every URL in objects (`http://127.0.0.1:8787` locally, the API URL in AWS).
    pub public_base_url: String,
    /// Only the local runtime sets this: callbacks to loopback are allowed explicitly.
    pub allow_loopback_callbacks: bool,
    pub quote_ttl_secs: i64,
    /// provider name → webhook secret (`whsec_…`) its confirmations are signed with.
    pub provider_secrets: BTreeMap<String, String>,
    /// Signs attestations. Only the attestation function holds one (the local key, or its KMS
    /// key in AWS); every other function has `None` and so no key material or KMS permission.
    pub signer: Option<Arc<dyn Signer>>,
    pub callback_retry: RetryPolicy,
    pub idempotency_ttl_secs: i64,
    /// The rule for transient store faults outside the ASL (checkpoints, record writes, the
    /// relay): [`Backoff::TRANSIENT`]; tests may scale it.
    pub transient: Backoff,
    /// x402 payments (facilitator, network, asset, payTo, rate); `None`: not accepted.
    pub x402: Option<crate::x402::X402Config>,
}

impl Config {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.public_base_url.trim_end_matches('/'), path)
    }

    /// The attestation signer, or `None` in a process configured without one.
    pub fn signer(&self) -> Option<&dyn Signer> {
        self.signer.as_deref()
    }
}

/// What every handler gets: the store and the configuration. Other ports are passed separately,
/// only to the handlers that need them.
#[derive(Clone)]
pub struct Ctx<S> {
    pub store: S,
    pub config: Arc<Config>,
}

impl<S> Ctx<S> {
    pub fn new(store: S, config: Config) -> Self {
        Ctx {
            store,
            config: Arc::new(config),
        }
    }
}
