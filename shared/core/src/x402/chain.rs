//! The chain, read-only: did an EIP-3009 authorization get used, and by which transaction? The
//! reconciler asks this when a settle's outcome is unknown — the chain, not the facilitator, is
//! the truth about money.

use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};

/// `authorizationState(address,bytes32)` selector (keccak-256 of the signature, first 4 bytes).
const AUTHORIZATION_STATE: &str = "e94a0102";
/// Topic 0 of `AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce)`.
const AUTHORIZATION_USED: &str =
    "0x98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5";
/// How far back the transaction of a used authorization is looked for (public RPCs cap
/// `eth_getLogs` ranges; a pending settlement is minutes old).
const LOG_WINDOW_BLOCKS: u64 = 10_000;

pub trait ChainReader: Send + Sync + Clone + 'static {
    /// Whether `asset` has marked `(from, nonce)` used: the transfer happened.
    fn authorization_used(
        &self,
        asset: &str,
        from: &str,
        nonce: &str,
    ) -> impl Future<Output = Result<bool, String>> + Send;
    /// The transaction that used it, if within the recent window.
    fn authorization_tx(
        &self,
        asset: &str,
        from: &str,
        nonce: &str,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;
}

#[derive(Clone)]
pub struct RpcChain {
    http: reqwest::Client,
    url: String,
}

fn word(hex_0x: &str) -> Result<String, String> {
    let h = hex_0x.trim_start_matches("0x").to_ascii_lowercase();
    if h.len() > 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("not a 32-byte hex value: {hex_0x}"));
    }
    Ok(format!("{h:0>64}"))
}

impl RpcChain {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(RpcChain {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            url: url.to_string(),
        })
    }

    /// One JSON-RPC call: its `result`, or the method and the error in words.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let bytes = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("{method}: {e}"))?
            .bytes()
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        let resp: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("{method}: unreadable: {e}"))?;
        if let Some(err) = resp.get("error") {
            return Err(format!("{method}: {err}"));
        }
        resp.get("result")
            .cloned()
            .ok_or_else(|| format!("{method}: no result"))
    }
}

impl ChainReader for RpcChain {
    async fn authorization_used(
        &self,
        asset: &str,
        from: &str,
        nonce: &str,
    ) -> Result<bool, String> {
        let data = format!("0x{AUTHORIZATION_STATE}{}{}", word(from)?, word(nonce)?);
        let r = self
            .call("eth_call", json!([{"to": asset, "data": data}, "latest"]))
            .await?;
        let h = r.as_str().unwrap_or_default().trim_start_matches("0x");
        Ok(h.bytes().any(|b| b != b'0'))
    }

    async fn authorization_tx(
        &self,
        asset: &str,
        from: &str,
        nonce: &str,
    ) -> Result<Option<String>, String> {
        let head = self.call("eth_blockNumber", json!([])).await?;
        let head = u64::from_str_radix(head.as_str().unwrap_or("0x0").trim_start_matches("0x"), 16)
            .map_err(|e| format!("eth_blockNumber: {e}"))?;
        let logs = self
            .call(
                "eth_getLogs",
                json!([{
                    "address": asset,
                    "fromBlock": format!("0x{:x}", head.saturating_sub(LOG_WINDOW_BLOCKS)),
                    "toBlock": "latest",
                    "topics": [AUTHORIZATION_USED, format!("0x{}", word(from)?), format!("0x{}", word(nonce)?)],
                }]),
            )
            .await?;
        Ok(logs
            .as_array()
            .and_then(|l| l.first())
            .and_then(|l| l.get("transactionHash"))
            .and_then(Value::as_str)
            .map(str::to_string))
    }
}
