//! The x402 peers for tests: a local chain (anvil) with an EIP-3009 token, the official x402
//! Python SDK's facilitator, and its client as the payer — started by `local/x402/peers.py up`
//! (scripts/test-all does it and sets `TOKENOPS_X402_PEERS` to its info file).

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

/// What `peers.py up` wrote, or None (skipped) when no peers run and they are not required
/// (`TOKENOPS_REQUIRE_X402`, set by CI, makes it a failure).
pub fn peers() -> Option<Value> {
    let Ok(path) = std::env::var("TOKENOPS_X402_PEERS") else {
        assert!(
            std::env::var("TOKENOPS_REQUIRE_X402").is_err(),
            "TOKENOPS_REQUIRE_X402 is set but TOKENOPS_X402_PEERS is not"
        );
        eprintln!("skipped: TOKENOPS_X402_PEERS is not set (make test starts the x402 peers)");
        return None;
    };
    Some(
        tokenops_local::paid_run::peers(std::path::Path::new(&path)).expect("x402 peers info file"),
    )
}

/// The x402 configuration that points TokenOps at the peers.
pub fn config(p: &Value, rate: u64) -> tokenops::x402::X402Config {
    tokenops_local::paid_run::config(p, rate).expect("the peers file configures x402")
}

/// One JSON-RPC call to the chain, through the reconciler's own client.
pub async fn rpc(p: &Value, method: &str, params: Value) -> Value {
    tokenops::x402::chain::RpcChain::new(p["rpc_url"].as_str().unwrap(), Duration::from_secs(30))
        .expect("JSON-RPC client")
        .call(method, params)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The token balance of `address` (atomic units).
pub async fn balance(p: &Value, address: &str) -> u128 {
    let data = format!(
        "0x70a08231{:0>64}",
        address.trim_start_matches("0x").to_ascii_lowercase()
    );
    let r = rpc(
        p,
        "eth_call",
        json!([{"to": p["asset"], "data": data}, "latest"]),
    )
    .await;
    u128::from_str_radix(r.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// The transaction's receipt status (1 = success), or None when the chain has no such one.
pub async fn receipt_status(p: &Value, tx: &str) -> Option<u64> {
    let r = rpc(p, "eth_getTransactionReceipt", json!([tx])).await;
    r.get("status")
        .and_then(Value::as_str)
        .map(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap())
}

/// Runs `pay.py <args>` with the SDK's venv and returns its JSON.
pub async fn pay_py(p: &Value, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(p["python"].as_str().unwrap())
        .arg(p["pay_script"].as_str().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("pay.py runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "pay.py {args:?}: no JSON (exit {:?}); stdout {stdout}; stderr {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Sends `body` to `url` with the agent's key and, if given, a PAYMENT-SIGNATURE.
pub async fn post_paid(
    url: &str,
    access_key: &str,
    body: &Value,
    payment: Option<&str>,
) -> (u16, std::collections::BTreeMap<String, String>, Value) {
    let agent = tokenops_local::agent::Agent {
        access_key: Some(access_key.into()),
        ..tokenops_local::agent::Agent::anonymous(url)
    };
    let headers: Vec<(&str, &str)> = payment
        .map(|p| ("payment-signature", p))
        .into_iter()
        .collect();
    let r = agent
        .call_with("POST", "", Some(body), &headers)
        .await
        .expect("TokenOps reachable");
    (r.status, r.headers, r.body)
}

/// Decodes an x402 header (base64 JSON).
pub fn decode_header(v: &str) -> Value {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v)
        .expect("x402 header is base64");
    serde_json::from_slice(&bytes).expect("x402 header is JSON")
}
