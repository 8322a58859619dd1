//! The MCP door as an LLM agent meets it: the official MCP Python SDK (PyPI `mcp`, in `.venv`)
//! drives a whole run through the tools (local/mcp/drive.py) against the embedded default, over
//! stdio (`tokenops mcp`) and over streamable HTTP (the local server's `/mcp`), subscribed to a
//! run while it heals. `make test` installs the SDK; run alone without it, this test says so and
//! passes (CI sets `TOKENOPS_REQUIRE_MCP`). Paying the tools over x402: tests/tests/x402.rs.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokenops_local::agent::{full_evidence, Agent, Receiver};

use tokenops_tests::{tokenops_binary as binary, workspace};

/// The venv's Python, if it has the MCP SDK.
async fn mcp_python() -> Option<PathBuf> {
    let python = std::env::var("TOKENOPS_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join(".venv/bin/python"));
    let has_sdk = tokio::process::Command::new(&python)
        .args(["-c", "import mcp"])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if has_sdk {
        return Some(python);
    }
    assert!(
        std::env::var("TOKENOPS_REQUIRE_MCP").is_err(),
        "{} has no MCP SDK (pip install -r scripts/requirements.txt)",
        python.display()
    );
    eprintln!("skipped: no MCP Python SDK at {}", python.display());
    None
}

/// Runs drive.py with `transport` arguments; its report. The callback secret it prints first
/// goes to `receiver` before the run's callback arrives.
async fn drive(
    python: &PathBuf,
    api: &str,
    cb: &str,
    receiver: &Receiver,
    transport: &[String],
) -> Value {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(workspace().join("local/mcp/drive.py"))
        .args(transport)
        .args(["--api", api, "--callback", cb]);
    tokenops_tests::run_agent_script(cmd, "drive.py", receiver, Duration::from_secs(180)).await
}

/// Subscribed to the waiting run of the evidence gap, the agent heard it change until it was
/// delivered and attested, over `protocol` (the 2025 `resources/subscribe` or the 2026-07-28
/// `subscriptions/listen`); `None`: the server offered no subscription on that connection.
fn check_updates(out: &Value, protocol: Option<&str>) {
    let updates = &out["updates"];
    let Some(protocol) = protocol else {
        assert!(updates.is_null(), "no subscriptions offered: {out}");
        return;
    };
    assert_eq!(updates["protocol"], protocol, "{out}");
    let gap = out["evidence_gap"]["run_id"].as_str().unwrap();
    assert_eq!(
        updates["honored"],
        serde_json::json!([format!("tokenops://runs/{gap}")])
    );
    let states = updates["states"].as_array().unwrap();
    assert_eq!(
        states.last().and_then(Value::as_str),
        Some("callback_delivered"),
        "the last update is the delivered run: {out}"
    );
}

/// What both transports must show.
fn check(out: &Value, receiver: &Receiver) {
    // Every tool is listed with an object input schema and a description a model can use.
    let tools = out["tools"].as_object().unwrap();
    let mut names: Vec<&str> = tools.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cancel_run",
            "claim_credentials",
            "fund",
            "get_object",
            "get_quote",
            "get_run",
            "onboard",
            "queue_status",
            "redeliver_callback",
            "submit_run",
            "supply_evidence",
            "verify_attestation",
            "verify_ledger"
        ]
    );
    for (name, t) in tools {
        assert_eq!(t["input_type"], "object", "{name}");
        assert!(t["description_words"].as_u64().unwrap() >= 15, "{name}");
    }
    assert_eq!(tools["get_run"]["output_schema"], true);
    assert_eq!(out["server"]["name"], "tokenops");

    // The whole run, through the tools only; its signed callback arrived once.
    let run = &out["run"];
    assert_eq!(run["state"], "callback_delivered", "{out}");
    assert_eq!(run["next_action"], "ready_for_downstream_agent");
    assert_eq!(run["attestation_valid"], true);
    assert_eq!(run["ledger_valid"], true);
    let run_id = run["run_id"].as_str().unwrap();
    assert_eq!(
        out["retried_submit_run_id"], run_id,
        "a retried call runs nothing new"
    );
    assert_eq!(
        receiver.verified_for(run_id).len(),
        1,
        "one verified callback"
    );

    // The evidence gap through the tools: ticket, supply_evidence, replayed and delivered.
    let gap = &out["evidence_gap"];
    assert_eq!(gap["state"], "callback_delivered", "{out}");
    assert_eq!(gap["replays"], 1, "{out}");
    assert!(!gap["missing"].as_array().unwrap().is_empty(), "{out}");

    // Resources: the manifest, the OpenAPI document, every schema; the run by its URI.
    let res = &out["resources"];
    let uris: Vec<&str> = res["uris"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(uris.contains(&"tokenops://manifest") && uris.contains(&"tokenops://openapi"));
    assert!(
        uris.contains(&"tokenops://schemas/full_loop_payload"),
        "{uris:?}"
    );
    assert_eq!(
        res["templates"],
        serde_json::json!(["tokenops://runs/{run_id}"])
    );
    assert_eq!(res["run_state"], "callback_delivered");
    assert!(
        out["other_agents_run_resource"]
            .as_str()
            .is_some_and(|e| e.contains("tokenops://runs/")),
        "another agent's run is not found: {out}"
    );

    // Errors are tool errors naming the field, and the session goes on.
    assert_eq!(out["bad_run_id"]["field"], "run_id", "{out}");
    assert_eq!(out["missing_field"]["field"], "claim_token", "{out}");
    assert_eq!(out["after_errors_state"], "callback_delivered");
    assert!(
        out["unknown_tool"].is_string(),
        "an unknown tool is refused"
    );
    // Another agent cannot see the run.
    assert_eq!(out["other_agents_run"]["status"], 404, "{out}");
    assert_eq!(out["other_agents_run"]["field"], "run_id");
    eprintln!(
        "MCP-driven run over {}: {} ms",
        out["transport"], run["wall_ms"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_drives_a_whole_run_over_stdio() {
    let Some(python) = mcp_python().await else {
        return;
    };
    assert!(binary().exists(), "{} not built", binary().display());
    let rt = tokenops_tests::runtime("mcp-stdio").await;
    let receiver = Receiver::default();
    let cb = receiver.start().await.unwrap();
    let server = vec!["--server".to_string(), binary().display().to_string()];
    let out = drive(&python, &rt.base_url, &cb, &receiver, &server).await;
    check(&out, &receiver);
    check_updates(&out, Some("resources/subscribe"));
    assert_eq!(out["server"]["protocol"], "2025-11-25");
    // The stdio session took the key claim_credentials returned.
    assert_eq!(out["quote_right_after_claim"], "ok", "{out}");

    // The same run driven over the HTTP API by the Rust reference agent, for the time beside it.
    let started = std::time::Instant::now();
    let agent = Agent::onboard(&rt.base_url, "http-agent", &cb)
        .await
        .unwrap();
    receiver.add_secret(&agent.callback_secret);
    let (quote, route, ent) = agent.fund(2).await.unwrap();
    let ent_id = ent["credit_entitlement_id"].as_str().unwrap();
    let stl = route["settlement_id"].as_str().unwrap();
    let body = agent.run_request(&quote, &ent, full_evidence(ent_id, stl), &cb);
    let run = agent.ok("POST", "/runs", Some(&body)).await.unwrap();
    let run_id = run["run_id"].as_str().unwrap();
    let done = agent
        .wait(&format!("/runs/{run_id}"), Duration::from_secs(60), |r| {
            r["state"] == "callback_delivered" && r["attested"] == true
        })
        .await
        .unwrap();
    let att = done["objects"]["attestation"][0]["id"].as_str().unwrap();
    let attestation = agent
        .ok("GET", &format!("/attestations/{att}"), None)
        .await
        .unwrap();
    let keys = agent.ok("GET", "/keys", None).await.unwrap();
    tokenops::proof::verify::attestation(attestation, keys).expect("the attestation verifies");
    eprintln!(
        "HTTP-driven run: {} ms (MCP over stdio: {} ms)",
        started.elapsed().as_millis(),
        out["run"]["wall_ms"]
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_drives_a_whole_run_over_streamable_http() {
    let Some(python) = mcp_python().await else {
        return;
    };
    let rt = tokenops_tests::runtime("mcp-http").await;
    let receiver = Receiver::default();
    let cb = receiver.start().await.unwrap();
    let url = vec!["--mcp-url".to_string(), format!("{}/mcp", rt.base_url)];
    let out = drive(&python, &rt.base_url, &cb, &receiver, &url).await;
    check(&out, &receiver);
    check_updates(&out, Some("subscriptions/listen"));
    assert_eq!(out["server"]["protocol"], "2026-07-28");
    // Over HTTP the key is the request's bearer token: without one, the API's 401.
    assert_eq!(out["quote_right_after_claim"], "error", "{out}");
    assert_eq!(out["quote_without_key"]["status"], 401, "{out}");
    rt.shutdown().await;
}

/// The deployed shape: the `mcp` Lambda function behind the HTTP API's `/mcp` route, through
/// `tokenops emulator` (skipped without one, like the other emulator tests). Its tools call the
/// API at `PUBLIC_BASE_URL`, the other functions, with the request's bearer key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_drives_a_whole_run_through_the_mcp_function() {
    let Some(python) = mcp_python().await else {
        return;
    };
    let Some(info) = tokenops_tests::emulator_info().await else {
        return;
    };
    let api = info["api_url"].as_str().unwrap().to_string();
    let receiver = Receiver::default();
    let cb = receiver.start().await.unwrap();
    let url = vec!["--mcp-url".to_string(), format!("{api}/mcp")];
    let out = drive(&python, &api, &cb, &receiver, &url).await;
    check(&out, &receiver);
    // Buffered answers through API Gateway: no stream to carry updates, so none are offered.
    check_updates(&out, None);
    assert_eq!(out["quote_without_key"]["status"], 401, "{out}");
}
