//! Issue 9: agents pay over HTTP 402 (x402 v2), proved with real peers — a local chain (anvil)
//! with an EIP-3009 token compiled from local/x402/Token.sol, the official x402 Python SDK's
//! facilitator, and its client as the payer. Nothing on the payment path is mocked.
//!
//! The tests share one chain and one payTo, so they take turns (balances are asserted exactly).

use std::time::Duration;

use serde_json::{json, Value};
use tokenops_local::agent::{Agent, Receiver};
use tokenops_local::runtime::{Options, Runtime};
use tokenops_tests::x402::{self, balance, pay_py, post_paid, receipt_status, rpc};
use tokenops_tests::{item_count, temp_dir, wait_delivered};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Token atomic units per credit in these tests.
const RATE: u64 = 10_000;

async fn runtime(tag: &str, peers: &Value, tweak: impl FnOnce(&mut Options)) -> Runtime {
    let mut opts = Options::new(temp_dir(tag), 0);
    opts.callback_retry.base_delay_ms = 20;
    opts.x402 = Some(x402::config(peers, RATE));
    opts.relay_interval = Duration::from_millis(300);
    opts.relay.x402_after_ms = 300;
    tweak(&mut opts);
    Runtime::start(opts).await.expect("local runtime starts")
}

struct Payer {
    agent: Agent,
    receiver: Receiver,
    quote: Value,
    body: Value,
}

impl Payer {
    fn price_atomic(&self) -> u128 {
        self.quote["x402"]["amount"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// An agent onboarded at `base` with a quote and the body of a run paid per run.
async fn payer(base: &str, name: &str) -> Payer {
    let (agent, receiver, callback_url) =
        Agent::onboard_listening(base, name).await.expect("onboard");
    let quote = agent
        .ok(
            "POST",
            "/quotes",
            Some(&json!({"requested_tool": "tokenops", "requested_capability": "tokenops_result_package"})),
        )
        .await
        .unwrap();
    let body = json!({
        "trust_profile_id": agent.trust_profile_id,
        "quote_id": quote["quote_id"],
        "requested_tool": "tokenops",
        "requested_capability": "tokenops_result_package",
        "evidence": tokenops_local::agent::paid_evidence(quote["quote_id"].as_str().unwrap()),
        "callback_url": callback_url,
    });
    Payer {
        agent,
        receiver,
        quote,
        body,
    }
}

fn write_body(tag: &str, body: &Value) -> String {
    let path = temp_dir(tag).with_extension("json");
    std::fs::write(&path, body.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

fn auth(a: &Agent) -> String {
    format!("Authorization: Bearer {}", a.access_key.as_deref().unwrap())
}

/// A PAYMENT-SIGNATURE built by the official SDK client for this request (`variant` makes a bad
/// one), from the payer key `key`.
async fn sign(peers: &Value, rt: &Runtime, p: &Payer, key: &str, variant: &str) -> Value {
    let body = write_body("x402-body", &p.body);
    let url = format!("{}/runs", rt.base_url);
    let out = pay_py(
        peers,
        &[
            "sign",
            "--url",
            &url,
            "--method",
            "POST",
            "--json-file",
            &body,
            "--header",
            &auth(&p.agent),
            "--payer-key",
            key,
            "--variant",
            variant,
        ],
    )
    .await;
    assert!(out.get("error").is_none(), "pay.py sign {variant}: {out}");
    out
}

/// Sends the request through the official x402 client (its requests wrapper answers the 402 by
/// itself), paying from `key` at most `max_amount`; returns pay.py's JSON.
async fn official_pay(
    peers: &Value,
    url: &str,
    body_file: &str,
    agent: &Agent,
    key: &str,
    max_amount: &str,
) -> Value {
    pay_py(
        peers,
        &[
            "pay",
            "--url",
            url,
            "--method",
            "POST",
            "--json-file",
            body_file,
            "--header",
            &auth(agent),
            "--payer-key",
            key,
            "--network",
            peers["network"].as_str().unwrap(),
            "--asset",
            peers["asset"].as_str().unwrap(),
            "--max-amount",
            max_amount,
        ],
    )
    .await
}

fn payer_key(peers: &Value, i: usize) -> (String, String) {
    let p = &peers["payers"][i];
    (
        p["address"].as_str().unwrap().to_string(),
        p["private_key"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_paid_with_the_official_client_is_delivered_with_the_payment_in_its_proofs() {
    let Some(peers) = x402::peers() else { return };
    let _turn = TURN.lock().await;
    let rt = runtime("x402-pay", &peers, |_| {}).await;
    let p = payer(&rt.base_url, "x402-payer").await;
    let (payer_addr, key) = payer_key(&peers, 0);
    let pay_to = peers["pay_to"].as_str().unwrap();
    let price = p.price_atomic();
    assert_eq!(
        price,
        p.quote["price_credits"].as_i64().unwrap() as u128 * RATE as u128,
        "the quote shows the price in the token"
    );

    // Unpaid: 402 with what to pay, as a header and as problem+json; nothing written.
    let before_items = item_count(&rt).await;
    let (status, headers, problem) = post_paid(
        &format!("{}/runs", rt.base_url),
        p.agent.access_key.as_deref().unwrap(),
        &p.body,
        None,
    )
    .await;
    assert_eq!(status, 402, "{problem}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(
        problem["type"],
        "https://tokenops.dev/problems/payment-required"
    );
    let required = x402::decode_header(&headers["payment-required"]);
    assert_eq!(required["x402Version"], 2);
    let accept = &required["accepts"][0];
    assert_eq!(accept["scheme"], "exact");
    assert_eq!(accept["network"], peers["network"]);
    assert_eq!(accept["asset"], peers["asset"]);
    assert_eq!(accept["payTo"], peers["pay_to"]);
    assert_eq!(accept["amount"], price.to_string());
    assert_eq!(accept["extra"]["name"], peers["asset_name"]);
    assert!(accept["maxTimeoutSeconds"].as_u64().unwrap() <= 300);
    assert_eq!(item_count(&rt).await, before_items, "a 402 writes nothing");

    // The manifest says what is accepted before anyone asks.
    let manifest = p
        .agent
        .ok("GET", "/.well-known/tokenops.json", None)
        .await
        .unwrap();
    let methods = manifest["payment_methods"].as_array().unwrap();
    assert!(methods.iter().any(|m| m["provider"] == "x402"
        && m["network"] == peers["network"]
        && m["asset"] == peers["asset"]
        && m["pay_to"] == peers["pay_to"]));

    // Paid by the official client (its requests wrapper answers the 402 by itself).
    let (payer_before, pay_to_before) = (
        balance(&peers, &payer_addr).await,
        balance(&peers, pay_to).await,
    );
    let body = write_body("x402-pay-body", &p.body);
    let started = std::time::Instant::now();
    let out = official_pay(
        &peers,
        &format!("{}/runs", rt.base_url),
        &body,
        &p.agent,
        &key,
        &price.to_string(),
    )
    .await;
    assert_eq!(out["status"], 202, "{out}");
    let settle = &out["payment_response"];
    assert_eq!(settle["success"], true, "{out}");
    let tx = settle["transaction"].as_str().unwrap().to_string();
    let run_id = out["body"]["run_id"].as_str().unwrap().to_string();
    let run = wait_delivered(&p.agent, &run_id).await;
    eprintln!(
        "paid run {run_id}: 402 → paid → delivered and attested in {} ms (client process included)",
        started.elapsed().as_millis()
    );
    assert_eq!(run["state"], "callback_delivered");
    assert_eq!(p.receiver.verified_for(&run_id).len(), 1, "one callback");

    // Money moved once, by exactly the price, on chain.
    assert_eq!(balance(&peers, &payer_addr).await, payer_before - price);
    assert_eq!(balance(&peers, pay_to).await, pay_to_before + price);
    assert_eq!(
        receipt_status(&peers, &tx).await,
        Some(1),
        "the transaction is on chain"
    );

    // Proof of payment and of work in one place.
    let receipt_id = run["objects"]["settlement_receipt"][0]["id"]
        .as_str()
        .unwrap();
    let receipt = p
        .agent
        .ok("GET", &format!("/receipts/{receipt_id}"), None)
        .await
        .unwrap();
    assert_eq!(receipt["provider"], "x402");
    assert_eq!(receipt["settlement_reference"], tx.as_str());
    assert_eq!(receipt["payment"]["transaction"], tx.as_str());
    assert_eq!(receipt["payment"]["network"], peers["network"]);
    assert_eq!(
        receipt["payment"]["payer"].as_str().unwrap().to_lowercase(),
        payer_addr.to_lowercase()
    );
    let att_id = run["objects"]["attestation"][0]["id"].as_str().unwrap();
    let att = p
        .agent
        .ok("GET", &format!("/attestations/{att_id}"), None)
        .await
        .unwrap();
    assert_eq!(
        att["statement"]["predicate"]["payment"]["transaction"],
        tx.as_str()
    );
    let route_id = run["objects"]["provider_route"][0]["id"].as_str().unwrap();
    let route = p
        .agent
        .ok("GET", &format!("/settlements/{route_id}"), None)
        .await
        .unwrap();
    assert_eq!(route["status"], "confirmed");
    assert_eq!(route["provider"], "x402");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_payment_resent_in_sequence_and_ten_at_once_funds_one_run_once() {
    let Some(peers) = x402::peers() else { return };
    let _turn = TURN.lock().await;
    let rt = runtime("x402-replay", &peers, |_| {}).await;
    let p = payer(&rt.base_url, "x402-replayer").await;
    let (payer_addr, key) = payer_key(&peers, 1);
    let pay_to = peers["pay_to"].as_str().unwrap().to_string();
    let price = p.price_atomic();
    let signed = sign(&peers, &rt, &p, &key, "good").await;
    let header = signed["payment_signature"].as_str().unwrap().to_string();
    let (payer_before, pay_to_before) = (
        balance(&peers, &payer_addr).await,
        balance(&peers, &pay_to).await,
    );
    let url = format!("{}/runs", rt.base_url);
    let access = p.agent.access_key.clone().unwrap();

    let (status, headers, first) = post_paid(&url, &access, &p.body, Some(&header)).await;
    assert_eq!(status, 202, "{first}");
    assert!(headers.contains_key("payment-response"));
    let run_id = first["run_id"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let (status, headers, again) = post_paid(&url, &access, &p.body, Some(&header)).await;
        assert_eq!(
            (status, again["run_id"].as_str()),
            (202, Some(run_id.as_str())),
            "{again}"
        );
        assert_eq!(
            headers.get("idempotent-replayed").map(String::as_str),
            Some("true")
        );
        assert!(
            headers.contains_key("payment-response"),
            "a resend gets the settlement too"
        );
    }
    let sends = (0..10).map(|_| {
        let (url, access, body, header) =
            (url.clone(), access.clone(), p.body.clone(), header.clone());
        tokio::spawn(async move { post_paid(&url, &access, &body, Some(&header)).await })
    });
    for s in sends {
        let (status, _, r) = s.await.unwrap();
        assert_eq!(
            (status, r["run_id"].as_str()),
            (202, Some(run_id.as_str())),
            "{r}"
        );
    }
    wait_delivered(&p.agent, &run_id).await;
    assert_eq!(
        balance(&peers, &payer_addr).await,
        payer_before - price,
        "charged once"
    );
    assert_eq!(
        balance(&peers, &pay_to).await,
        pay_to_before + price,
        "received once"
    );
    let ent = first["run_contract"]["credit_entitlement_id"]
        .as_str()
        .unwrap();
    let ent = p
        .agent
        .ok("GET", &format!("/credit-entitlements/{ent}"), None)
        .await
        .unwrap();
    assert_eq!(
        ent["balances"]["funded"], p.quote["price_credits"],
        "funded once: {ent}"
    );

    // A fresh, concurrent pair of payments: ten sends of a *new* signature race its first
    // settle — one settles, every send gets that one run.
    let p2 = payer(&rt.base_url, "x402-racer").await;
    let signed = sign(&peers, &rt, &p2, &key, "good").await;
    let header = signed["payment_signature"].as_str().unwrap().to_string();
    let payer_before = balance(&peers, &payer_addr).await;
    let access = p2.agent.access_key.clone().unwrap();
    let sends: Vec<_> = (0..10)
        .map(|_| {
            let (url, access, body, header) =
                (url.clone(), access.clone(), p2.body.clone(), header.clone());
            tokio::spawn(async move { post_paid(&url, &access, &body, Some(&header)).await })
        })
        .collect();
    let mut runs = std::collections::BTreeSet::new();
    for s in sends {
        let (status, _, r) = s.await.unwrap();
        assert_eq!(status, 202, "{r}");
        runs.insert(r["run_id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        runs.len(),
        1,
        "ten concurrent first sends make one run: {runs:?}"
    );
    assert_eq!(
        balance(&peers, &payer_addr).await,
        payer_before - price,
        "charged once"
    );

    // The payment-identifier extension keys a payment too: a client that re-signs (a new
    // nonce) under the same id gets its first outcome, and the second authorization is never
    // settled.
    let p3 = payer(&rt.base_url, "x402-identified").await;
    let with_id = |signed: &Value| {
        let mut payload = signed["payload"].clone();
        payload["extensions"] = json!({"payment-identifier": {"info": {"required": false, "id": "pay_0123456789abcdef0123"}}});
        tokenops::x402::encode_header(&payload)
    };
    let first = with_id(&sign(&peers, &rt, &p3, &key, "good").await);
    let second = with_id(&sign(&peers, &rt, &p3, &key, "good").await);
    assert_ne!(first, second);
    let payer_before = balance(&peers, &payer_addr).await;
    let access = p3.agent.access_key.clone().unwrap();
    let (status, _, a) = post_paid(&url, &access, &p3.body, Some(&first)).await;
    assert_eq!(status, 202, "{a}");
    let (status, headers, b) = post_paid(&url, &access, &p3.body, Some(&second)).await;
    assert_eq!(
        (status, b["run_id"].as_str()),
        (202, a["run_id"].as_str()),
        "{b}"
    );
    assert_eq!(
        headers.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        balance(&peers, &payer_addr).await,
        payer_before - price,
        "one of the two settled"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_bad_payment_is_refused_naming_what_is_wrong_and_nothing_moves() {
    let Some(peers) = x402::peers() else { return };
    let _turn = TURN.lock().await;
    let rt = runtime("x402-bad", &peers, |_| {}).await;
    let p = payer(&rt.base_url, "x402-bad-payer").await;
    let (payer_addr, key) = payer_key(&peers, 2);
    let pay_to = peers["pay_to"].as_str().unwrap().to_string();
    let url = format!("{}/runs", rt.base_url);
    let access = p.agent.access_key.clone().unwrap();
    for (variant, field) in [
        ("underpaid", "PAYMENT-SIGNATURE.payload.authorization.value"),
        ("wrong-asset", "PAYMENT-SIGNATURE.accepted.asset"),
        ("wrong-network", "PAYMENT-SIGNATURE.accepted.network"),
        ("wrong-payto", "PAYMENT-SIGNATURE.accepted.payTo"),
        (
            "expired",
            "PAYMENT-SIGNATURE.payload.authorization.validBefore",
        ),
        (
            "not-yet-valid",
            "PAYMENT-SIGNATURE.payload.authorization.validAfter",
        ),
        ("bad-signature", "PAYMENT-SIGNATURE.payload.signature"),
        (
            "broke-payer",
            "PAYMENT-SIGNATURE.payload.authorization.from",
        ),
    ] {
        let signed = sign(&peers, &rt, &p, &key, variant).await;
        let items = item_count(&rt).await;
        let (b_payer, b_to) = (
            balance(&peers, &payer_addr).await,
            balance(&peers, &pay_to).await,
        );
        let header = signed["payment_signature"].as_str().unwrap();
        let (status, headers, problem) = post_paid(&url, &access, &p.body, Some(header)).await;
        assert_eq!(status, 402, "{variant}: {problem}");
        assert_eq!(
            problem["type"], "https://tokenops.dev/problems/payment-invalid",
            "{variant}"
        );
        assert_eq!(problem["field"], field, "{variant}: {problem}");
        assert!(
            headers.contains_key("payment-required"),
            "{variant}: the requirements again"
        );
        assert_eq!(item_count(&rt).await, items, "{variant}: nothing written");
        assert_eq!(balance(&peers, &payer_addr).await, b_payer, "{variant}");
        assert_eq!(balance(&peers, &pay_to).await, b_to, "{variant}");
        eprintln!("{variant}: 402 {field}: {}", problem["detail"]);
    }
    // A request that would be refused anyway is refused before any payment is asked for.
    let mut wrong = p.body.clone();
    wrong["requested_capability"] = json!("something_else");
    let (status, _, problem) = post_paid(&url, &access, &wrong, None).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("requested_capability")),
        "{problem}"
    );
    // Not a payment at all.
    let items = item_count(&rt).await;
    let (status, _, problem) = post_paid(&url, &access, &p.body, Some("not a payment")).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (402, Some("PAYMENT-SIGNATURE")),
        "{problem}"
    );
    assert_eq!(item_count(&rt).await, items, "junk: nothing written");
    rt.shutdown().await;

    // The facilitator cannot be reached: 503, retryable, nothing funded or written.
    let mut down = peers.clone();
    down["facilitator_url"] = json!("http://127.0.0.1:9");
    let rt = runtime("x402-down", &down, |_| {}).await;
    let p = payer(&rt.base_url, "x402-down-payer").await;
    let signed = sign(&peers, &rt, &p, &key, "good").await;
    let items = item_count(&rt).await;
    let (status, headers, problem) = post_paid(
        &format!("{}/runs", rt.base_url),
        p.agent.access_key.as_deref().unwrap(),
        &p.body,
        signed["payment_signature"].as_str(),
    )
    .await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(headers.contains_key("retry-after"));
    assert!(
        !problem["detail"].as_str().unwrap().contains("127.0.0.1"),
        "no internals: {problem}"
    );
    assert_eq!(item_count(&rt).await, items, "nothing written");
    rt.shutdown().await;
}

async fn set_automine(peers: &Value, on: bool) {
    rpc(peers, "evm_setAutomine", json!([on])).await;
}

async fn wait_pending_txs(peers: &Value, n: u64) {
    for _ in 0..200 {
        let s = rpc(peers, "txpool_status", json!([])).await;
        let pending = u64::from_str_radix(
            s["pending"]
                .as_str()
                .unwrap_or("0x0")
                .trim_start_matches("0x"),
            16,
        )
        .unwrap_or(0);
        if pending >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} transactions never reached the mempool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settle_whose_outcome_is_unknown_is_reconciled_from_the_chain_and_the_run_goes_on() {
    let Some(peers) = x402::peers() else { return };
    let _turn = TURN.lock().await;
    // The facilitator is given 2 s: with mining paused, its settle cannot finish in time.
    let rt = runtime("x402-unknown", &peers, |o| {
        if let Some(c) = o.x402.as_mut() {
            c.timeout = Duration::from_secs(2);
        }
    })
    .await;
    let p = payer(&rt.base_url, "x402-unknown-payer").await;
    let (payer_addr, key) = payer_key(&peers, 0);
    let price = p.price_atomic();
    let signed = sign(&peers, &rt, &p, &key, "good").await;
    let header = signed["payment_signature"].as_str().unwrap().to_string();
    let url = format!("{}/runs", rt.base_url);
    let access = p.agent.access_key.clone().unwrap();
    let payer_before = balance(&peers, &payer_addr).await;

    set_automine(&peers, false).await;
    let (status, headers, problem) = post_paid(&url, &access, &p.body, Some(&header)).await;
    wait_pending_txs(&peers, 1).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(
        problem["type"],
        "https://tokenops.dev/problems/payment-pending"
    );
    assert!(headers.contains_key("retry-after"));
    // Visible as pending, funding nothing yet.
    let (status, _, again) = post_paid(&url, &access, &p.body, Some(&header)).await;
    assert_eq!(status, 503, "still pending: {again}");
    rpc(&peers, "evm_mine", json!([])).await;
    set_automine(&peers, true).await;

    // The reconciler reads the chain: the authorization was used → funded; the resend runs.
    let mut accepted = None;
    for _ in 0..100 {
        let (status, _, r) = post_paid(&url, &access, &p.body, Some(&header)).await;
        if status == 202 {
            accepted = Some(r);
            break;
        }
        assert_eq!(status, 503, "{r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let accepted = accepted.expect("the pending settlement was reconciled");
    let run_id = accepted["run_id"].as_str().unwrap();
    let sid = accepted["run_contract"]["settlement_id"].as_str().unwrap();
    let route = p
        .agent
        .ok("GET", &format!("/settlements/{sid}"), None)
        .await
        .unwrap();
    assert_eq!(route["status"], "confirmed", "{route}");
    let tx = route["payment"]["transaction"]
        .as_str()
        .expect("the reconciler found the transaction");
    assert_eq!(receipt_status(&peers, tx).await, Some(1));
    wait_delivered(&p.agent, run_id).await;
    assert_eq!(
        balance(&peers, &payer_addr).await,
        payer_before - price,
        "charged once"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settle_that_fails_after_verify_funds_nothing() {
    let Some(peers) = x402::peers() else { return };
    let _turn = TURN.lock().await;
    let rt = runtime("x402-settle-fails", &peers, |_| {}).await;
    let a = payer(&rt.base_url, "x402-double-spender-a").await;
    let b = payer(&rt.base_url, "x402-double-spender-b").await;
    let price = a.price_atomic();
    // A payer holding one and a half prices: each payment verifies alone, only one can settle.
    let (funder, _) = payer_key(&peers, 2);
    // anvil's dev account 8 (public test mnemonic): no payer of the kit, no tokens minted.
    let thin = "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f".to_string();
    let thin_key = "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97".to_string();
    let top_up = price * 3 / 2 - balance(&peers, &thin).await.min(price * 3 / 2);
    let data = format!(
        "0xa9059cbb{:0>64}{:0>64x}",
        thin.trim_start_matches("0x").to_lowercase(),
        top_up
    );
    rpc(
        &peers,
        "eth_sendTransaction",
        json!([{"from": funder, "to": peers["asset"], "data": data}]),
    )
    .await;
    assert_eq!(balance(&peers, &thin).await, price * 3 / 2);
    let sa = sign(&peers, &rt, &a, &thin_key, "good").await;
    let sb = sign(&peers, &rt, &b, &thin_key, "good").await;
    let to_before = balance(&peers, peers["pay_to"].as_str().unwrap()).await;

    // Both settle transactions reach the mempool before one block mines them.
    set_automine(&peers, false).await;
    let url = format!("{}/runs", rt.base_url);
    let send = |p: &Payer, s: &Value| {
        let (url, access, body, h) = (
            url.clone(),
            p.agent.access_key.clone().unwrap(),
            p.body.clone(),
            s["payment_signature"].as_str().unwrap().to_string(),
        );
        tokio::spawn(async move { post_paid(&url, &access, &body, Some(&h)).await })
    };
    let (ra, rb) = (send(&a, &sa), send(&b, &sb));
    wait_pending_txs(&peers, 2).await;
    rpc(&peers, "evm_mine", json!([])).await;
    set_automine(&peers, true).await;
    let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
    let statuses = [ra.0, rb.0];
    assert!(
        statuses.contains(&202),
        "one payment settles: {ra:?} {rb:?}"
    );
    let (loser, loser_payer) = if ra.0 == 202 { (&rb, &b) } else { (&ra, &a) };
    // The other: refused at once (402) or pending until the reconciler sees it never moved.
    let loser_sig = if ra.0 == 202 { &sb } else { &sa };
    let mut last = loser.clone();
    for _ in 0..100 {
        if last.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = post_paid(
            &url,
            loser_payer.agent.access_key.as_deref().unwrap(),
            &loser_payer.body,
            loser_sig["payment_signature"].as_str(),
        )
        .await;
    }
    assert_eq!(last.0, 402, "the failed settle ends refused: {:?}", last.2);
    assert_eq!(
        balance(&peers, peers["pay_to"].as_str().unwrap()).await,
        to_before + price,
        "one transfer"
    );
    assert_eq!(balance(&peers, &thin).await, price / 2);
    assert!(
        last.2["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was charged"),
        "{:?}",
        last.2
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prepaid_credits_paid_over_x402_fund_an_entitlement_that_runs_work() {
    let Some(peers) = x402::peers() else { return };
    let _turn = TURN.lock().await;
    let rt = runtime("x402-topup", &peers, |_| {}).await;
    let p = payer(&rt.base_url, "x402-topup-payer").await;
    let (payer_addr, key) = payer_key(&peers, 2);
    let credits = 3 * p.quote["price_credits"].as_i64().unwrap();
    let body = json!({"quote_id": p.quote["quote_id"], "provider": "x402", "credits": credits});
    let url = format!("{}/settlements", rt.base_url);
    let (status, headers, problem) =
        post_paid(&url, p.agent.access_key.as_deref().unwrap(), &body, None).await;
    assert_eq!(status, 402, "{problem}");
    let required = x402::decode_header(&headers["payment-required"]);
    let amount = (credits as u128 * RATE as u128).to_string();
    assert_eq!(required["accepts"][0]["amount"], amount.as_str());

    let before = balance(&peers, &payer_addr).await;
    let file = write_body("x402-topup-body", &body);
    let out = official_pay(&peers, &url, &file, &p.agent, &key, &amount).await;
    assert_eq!(out["status"], 201, "{out}");
    let route = &out["body"];
    assert_eq!(route["status"], "confirmed");
    assert_eq!(route["provider"], "x402");
    assert_eq!(
        route["payment"]["transaction"],
        out["payment_response"]["transaction"]
    );
    assert_eq!(
        balance(&peers, &payer_addr).await,
        before - amount.parse::<u128>().unwrap()
    );
    let ent_id = route["credit_entitlement_id"].as_str().unwrap();
    let ent = p
        .agent
        .ok("GET", &format!("/credit-entitlements/{ent_id}"), None)
        .await
        .unwrap();
    assert_eq!(ent["status"], "funded");
    assert_eq!(ent["balances"]["available"], credits);

    // The prepaid entitlement pays a run like any other (no payment header needed).
    let mut run = p.body.clone();
    run["credit_entitlement_id"] = json!(ent_id);
    let accepted = p.agent.ok("POST", "/runs", Some(&run)).await.unwrap();
    wait_delivered(&p.agent, accepted["run_id"].as_str().unwrap()).await;
    rt.shutdown().await;
}

/// The same pay-per-run through the deployed shape: the real function binaries behind the
/// emulator's HTTP API (run_contract verifies and settles inside its Lambda), over moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_paid_over_x402_through_the_lambda_functions_on_the_emulator() {
    let Some(peers) = x402::peers() else { return };
    let Some(info) = tokenops_tests::emulator_info().await else {
        return;
    };
    let _turn = TURN.lock().await;
    let api = info["api_url"]
        .as_str()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let Payer {
        agent,
        receiver,
        quote,
        body,
    } = payer(&api, "x402-emulated-payer").await;
    assert!(
        quote["x402"].is_object(),
        "the emulator runs without x402 (scripts/test-all passes --set X402FacilitatorUrl=…): {quote}"
    );
    let price: u128 = quote["x402"]["amount"].as_str().unwrap().parse().unwrap();
    let (payer_addr, key) = payer_key(&peers, 1);
    let pay_to = peers["pay_to"].as_str().unwrap();
    let (payer_before, to_before) = (
        balance(&peers, &payer_addr).await,
        balance(&peers, pay_to).await,
    );
    let file = write_body("x402-emulated-body", &body);
    let started = std::time::Instant::now();
    let out = official_pay(
        &peers,
        &format!("{api}/runs"),
        &file,
        &agent,
        &key,
        &price.to_string(),
    )
    .await;
    assert_eq!(out["status"], 202, "{out}");
    let tx = out["payment_response"]["transaction"]
        .as_str()
        .unwrap()
        .to_string();
    let run_id = out["body"]["run_id"].as_str().unwrap().to_string();
    let run = agent
        .wait(&format!("/runs/{run_id}"), Duration::from_secs(120), |r| {
            r["state"] == "callback_delivered" && r["attested"] == true
        })
        .await
        .expect("the paid run is delivered through the emulated functions");
    eprintln!(
        "emulated paid run {run_id}: paid → delivered and attested in {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(receiver.verified_for(&run_id).len(), 1);
    assert_eq!(balance(&peers, &payer_addr).await, payer_before - price);
    assert_eq!(balance(&peers, pay_to).await, to_before + price);
    assert_eq!(receipt_status(&peers, &tx).await, Some(1));
    let receipt_id = run["objects"]["settlement_receipt"][0]["id"]
        .as_str()
        .unwrap();
    let receipt = agent
        .ok("GET", &format!("/receipts/{receipt_id}"), None)
        .await
        .unwrap();
    assert_eq!(receipt["payment"]["transaction"], tx.as_str());
}

/// Runs local/x402/mcp_pay.py (the official x402 SDK's MCP payer over the official MCP Python
/// SDK) with `transport` arguments, paying from `key`; its report. The callback secret it prints
/// first goes to `receiver`.
async fn mcp_pay(
    peers: &Value,
    transport: &[String],
    cb: &str,
    receiver: &Receiver,
    key: &str,
) -> Value {
    let mut cmd = tokio::process::Command::new(peers["python"].as_str().unwrap());
    cmd.arg(tokenops_tests::workspace().join("local/x402/mcp_pay.py"))
        .args(transport)
        .args(["--callback", cb, "--payer-key", key])
        .args(["--network", peers["network"].as_str().unwrap()])
        .args(["--asset", peers["asset"].as_str().unwrap()]);
    tokenops_tests::run_agent_script(cmd, "mcp_pay.py", receiver, Duration::from_secs(240)).await
}

/// x402 over MCP (issue 11): an x402-capable MCP client — the official x402 SDK's MCP payer
/// (`x402.mcp.x402MCPSession`) over the official MCP Python SDK — pays `submit_run` and `fund`
/// through `tokenops mcp` (stdio) and the local server's `/mcp` (streamable HTTP), with no
/// TokenOps code on its side: the payment-required tool result, `_meta["x402/payment"]`, and the
/// settlement in `_meta["x402/payment-response"]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_x402_mcp_client_pays_the_tools_over_stdio_and_streamable_http() {
    let Some(peers) = x402::peers() else { return };
    let _turn = TURN.lock().await;
    let rt = runtime("x402-mcp", &peers, |_| {}).await;
    let (payer_addr, key) = payer_key(&peers, 3);
    let pay_to = peers["pay_to"].as_str().unwrap();
    let stdio = [
        "--server".to_string(),
        tokenops_tests::tokenops_binary().display().to_string(),
        "--api".to_string(),
        rt.base_url.clone(),
    ];
    let http = ["--mcp-url".to_string(), format!("{}/mcp", rt.base_url)];
    for transport in [&stdio[..], &http[..]] {
        let receiver = Receiver::default();
        let cb = receiver.start().await.unwrap();
        let (payer_before, pay_to_before) = (
            balance(&peers, &payer_addr).await,
            balance(&peers, pay_to).await,
        );
        let out = mcp_pay(&peers, transport, &cb, &receiver, &key).await;

        // Unpaid: the spec's payment-required result, in structuredContent and content[0].
        let unpaid = &out["unpaid"];
        assert_eq!(unpaid["is_error"], true, "{out}");
        assert_eq!(unpaid["x402_version"], 2);
        assert_eq!(unpaid["text_wrapper_code"], 402);
        assert_eq!(unpaid["text_wrapper_has_data"], true);
        let accept = &unpaid["accepts"][0];
        assert_eq!(accept["payTo"], peers["pay_to"]);
        assert_eq!(accept["asset"], peers["asset"]);
        let price: u128 = accept["amount"].as_str().unwrap().parse().unwrap();
        assert!(
            unpaid["error"]
                .as_str()
                .unwrap()
                .contains("_meta[\"x402/payment\"]"),
            "{out}"
        );

        // A payment that does not answer the requirements: refused, saying why, nothing moves.
        let refused = &out["refused"];
        assert_eq!(refused["is_error"], true, "{out}");
        assert_eq!(refused["accepts"], unpaid["accepts"]);
        assert!(
            refused["error"]
                .as_str()
                .unwrap()
                .starts_with("_meta[\"x402/payment\"].payload.authorization.value: underpaid"),
            "{out}"
        );
        assert_eq!(
            refused["problem_field"], "_meta[\"x402/payment\"].payload.authorization.value",
            "{out}"
        );

        // Paid by the SDK's MCP payer on its own; the settlement comes back in _meta.
        let paid = &out["paid_run"];
        assert_eq!(paid["payment_made"], true, "{out}");
        assert_eq!(paid["payment_response"]["success"], true, "{out}");
        let tx = paid["payment_response"]["transaction"].as_str().unwrap();
        assert_eq!(receipt_status(&peers, tx).await, Some(1), "on chain");
        let run_id = paid["run_id"].as_str().unwrap();
        // The same call again answers with the same run and pays nothing.
        assert_eq!(out["paid_again"]["payment_made"], false, "{out}");
        assert_eq!(out["paid_again"]["run_id"], run_id);
        assert_eq!(out["run"]["state"], "callback_delivered");
        assert_eq!(out["run"]["attestation_valid"], true);
        assert_eq!(out["run"]["statement_payment"]["transaction"], tx);
        assert_eq!(receiver.verified_for(run_id).len(), 1, "one callback");

        // Prepaid credits over x402 through the fund tool.
        let fund = &out["fund"];
        assert_eq!(fund["payment_made"], true, "{out}");
        assert_eq!(fund["status"], "confirmed");
        assert_eq!(fund["provider"], "x402");
        assert_eq!(
            fund["route_transaction"],
            fund["payment_response"]["transaction"]
        );
        let top_up = fund["credits"].as_u64().unwrap() as u128 * RATE as u128;

        // Money moved exactly twice: the run's price and the top-up.
        assert_eq!(
            balance(&peers, &payer_addr).await,
            payer_before - price - top_up
        );
        assert_eq!(
            balance(&peers, pay_to).await,
            pay_to_before + price + top_up
        );
        eprintln!(
            "x402 over MCP ({}): paid submit_run in {} ms, delivered and attested in {} ms",
            out["transport"], paid["paid_ms"], out["run"]["wall_ms"]
        );
    }
    rt.shutdown().await;
}
