//! `tokenops reference-run --x402-peers FILE` (`make run-x402`): the reference loop paid over
//! HTTP 402. The runtime takes x402 through the peers `local/x402/peers.py up` started (a local
//! chain with the test token, the official SDK's facilitator); the agent asks for a run without
//! credits, is answered 402, and pays with the official x402 client (`local/x402/pay.py pay`: the
//! SDK's requests wrapper answers the 402 itself). Progress goes to stderr; the full loop payload
//! and the payment are the last JSON object on stdout.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::agent::{paid_evidence, Agent};
use crate::reference::{follow, verify_run, ReferenceError};

/// What `peers.py up` wrote: the chain, the token, the facilitator, payers, the SDK's python.
pub fn peers(path: &std::path::Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

/// The x402 settings that point TokenOps at the peers, at `atomic_per_credit`.
pub fn config(p: &Value, atomic_per_credit: u64) -> Result<tokenops::x402::X402Config, String> {
    let field = |k: &str| p[k].as_str().map(str::to_string);
    tokenops::x402::X402Config::from_lookup(|name| match name {
        "X402_FACILITATOR_URL" => field("facilitator_url"),
        "X402_NETWORK" => field("network"),
        "X402_ASSET" => field("asset"),
        "X402_ASSET_NAME" => field("asset_name"),
        "X402_ASSET_VERSION" => field("asset_version"),
        "X402_PAY_TO" => field("pay_to"),
        "X402_RPC_URL" => field("rpc_url"),
        "X402_ATOMIC_PER_CREDIT" => Some(atomic_per_credit.to_string()),
        _ => None,
    })
    .map_err(|e| e.to_string())?
    .ok_or_else(|| "the peers file names no facilitator".into())
}

async fn block_number(rpc_url: &str) -> Result<u64, ReferenceError> {
    let chain = |e: String| ReferenceError::Check(format!("chain: {e}"));
    let head = tokenops::x402::chain::RpcChain::new(rpc_url, Duration::from_secs(10))
        .map_err(|e| chain(e.to_string()))?
        .call("eth_blockNumber", json!([]))
        .await
        .map_err(chain)?;
    u64::from_str_radix(head.as_str().unwrap_or("0x0").trim_start_matches("0x"), 16)
        .map_err(|e| chain(e.to_string()))
}

/// Plays one agent paying per run over x402 against the runtime at `base`.
pub async fn play(base: &str, peers: &Value) -> Result<Value, ReferenceError> {
    let check = |what: &str| ReferenceError::Check(what.to_string());
    let t0 = Instant::now();
    let (agent, receiver, cb) = Agent::onboard_listening(base, "x402-reference-agent").await?;
    eprintln!("[ 1/14] onboarding           agent {}", agent.agent_id);
    let quote = agent
        .ok(
            "POST",
            "/quotes",
            Some(&json!({"requested_tool": "tokenops", "requested_capability": "tokenops_result_package"})),
        )
        .await?;
    let price = &quote["x402"];
    eprintln!(
        "[ 3/14] quote                {} credit(s) = {} atomic units of {} on {}",
        quote["price_credits"],
        price["amount"].as_str().unwrap_or("?"),
        price["asset"].as_str().unwrap_or("?"),
        price["network"].as_str().unwrap_or("?")
    );
    let body = json!({
        "trust_profile_id": agent.trust_profile_id,
        "quote_id": quote["quote_id"],
        "requested_tool": "tokenops",
        "requested_capability": "tokenops_result_package",
        "evidence": paid_evidence(quote["quote_id"].as_str().unwrap_or_default()),
        "callback_url": cb,
    });
    let unpaid = agent.call("POST", "/runs", Some(&body), None).await?;
    if unpaid.status != 402 || unpaid.header("payment-required").is_none() {
        return Err(check(&format!(
            "an unpaid POST /runs should be a 402 with PAYMENT-REQUIRED, got {}",
            unpaid.status
        )));
    }
    eprintln!(
        "         POST /runs           402 Payment Required (PAYMENT-REQUIRED: exact, {})",
        price["network"].as_str().unwrap_or("?")
    );

    let dir = std::env::temp_dir().join(format!("tokenops-x402-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).map_err(|e| check(&e.to_string()))?;
    let body_file = dir.join("run.json");
    std::fs::write(&body_file, body.to_string()).map_err(|e| check(&e.to_string()))?;
    let blocks_before = block_number(peers["rpc_url"].as_str().unwrap_or_default()).await?;
    let paid_at = Instant::now();
    let out = tokio::process::Command::new(peers["python"].as_str().unwrap_or("python3"))
        .arg(peers["pay_script"].as_str().unwrap_or("local/x402/pay.py"))
        .args(["pay", "--url", &format!("{base}/runs"), "--method", "POST"])
        .arg("--json-file")
        .arg(&body_file)
        .args([
            "--header",
            &format!(
                "Authorization: Bearer {}",
                agent.access_key.as_deref().unwrap_or("")
            ),
            "--payer-key",
            peers["payers"][0]["private_key"]
                .as_str()
                .unwrap_or_default(),
            "--network",
            peers["network"].as_str().unwrap_or_default(),
            "--asset",
            peers["asset"].as_str().unwrap_or_default(),
            "--max-amount",
            price["amount"].as_str().unwrap_or("0"),
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| check(&format!("the x402 client did not run: {e}")))?;
    let paid: Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        check(&format!(
            "the x402 client printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    if paid["status"] != 202 {
        return Err(check(&format!("the paid POST /runs answered {paid}")));
    }
    let tx = paid["payment_response"]["transaction"]
        .as_str()
        .unwrap_or("")
        .to_string();
    eprintln!("         POST /runs (paid)    202 — settled on chain in transaction {tx}");
    let run_id = paid["body"]["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut shown = 3; // the route and entitlement were made by the paid request itself
    let run = follow(&agent, &run_id, &mut shown, Duration::from_secs(60)).await?;
    let wall_ms = paid_at.elapsed().as_millis();
    if run["state"] != "callback_delivered" || receiver.verified_for(&run_id).len() != 1 {
        return Err(check(&format!("run {run_id} ended {}", run["state"])));
    }
    verify_run(&agent, &run).await?;
    let blocks = block_number(peers["rpc_url"].as_str().unwrap_or_default()).await? - blocks_before;
    let receipt_id = run["objects"]["settlement_receipt"][0]["id"]
        .as_str()
        .unwrap_or_default();
    let receipt = agent
        .ok("GET", &format!("/receipts/{receipt_id}"), None)
        .await?;
    eprintln!(
        "paid run {run_id}: paid → callback delivered and attested in {wall_ms} ms \
         ({} ms in all); {blocks} on-chain transaction(s) (anvil mines one block per transaction)",
        t0.elapsed().as_millis()
    );
    Ok(
        json!({"run": run, "settlement_receipt": receipt, "payment_response": paid["payment_response"], "paid_wall_ms": wall_ms, "onchain_transactions": blocks}),
    )
}
