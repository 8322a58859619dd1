//! The loop through the deployed shape on an emulator: HTTP API → API functions → SQS → queue
//! function → Step Functions (moto's engine executing infra/statemachine.asl.json) → every task
//! function binary → callback received and verified. `make test` starts moto and
//! `tokenops emulator` and names the emulator's AWS endpoint in `TOKENOPS_EMULATOR`; run alone
//! without it, these tests say so and pass (CI sets `TOKENOPS_REQUIRE_EMULATOR`, which makes a
//! missing emulator a failure).

use std::time::Duration;

use serde_json::{json, Value};
use tokenops_local::agent::{full_evidence, Agent, Receiver};

/// One emulator serves this whole binary: tests take turns, so an injected fault hits the test
/// that injected it.
static EMULATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Turns the emulator's "deliver every SQS batch twice" on or off (each test sets the state it
/// needs, so a failed test cannot leave it on for the next); returns how many batches have been
/// delivered twice so far.
async fn duplicate_sqs(info: &Value, enabled: bool) -> u64 {
    let endpoint = info["endpoint_url"].as_str().unwrap();
    let body = reqwest::Client::new()
        .post(format!("{endpoint}/_emulator/duplicate-sqs"))
        .body(json!({ "enabled": enabled }).to_string())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let r: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(r["enabled"], enabled);
    r["duplicated_batches"].as_u64().unwrap()
}

async fn add_fault(info: &Value, fault: Value) {
    let endpoint = info["endpoint_url"].as_str().unwrap();
    let r = reqwest::Client::new()
        .post(format!("{endpoint}/_emulator/faults"))
        .body(fault.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_and_evidence_gap_scenarios_through_the_emulator() {
    let _turn = EMULATOR.lock().await;
    let Some(info) = tokenops_tests::emulator_info().await else {
        return;
    };
    duplicate_sqs(&info, false).await;
    let api = info["api_url"].as_str().unwrap();
    // Both scenarios of `tokenops reference-run`, against the emulated deployment: the full loop
    // with a verified callback, attestation and ledger, then evidence gap → exception ticket →
    // evidence supplied → replay → delivered.
    let run = tokenops_local::reference::play(api)
        .await
        .expect("both scenarios complete through the emulator");
    assert_eq!(run["state"], "callback_delivered");
    assert_eq!(run["next_action"], "ready_for_downstream_agent");
    assert_eq!(
        run["objects"].as_object().unwrap().len(),
        tokenops::model::PATH.len(),
        "an object for every stage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_messages_and_retried_tasks_have_one_effect() {
    let _turn = EMULATOR.lock().await;
    let Some(info) = tokenops_tests::emulator_info().await else {
        return;
    };
    let api = info["api_url"].as_str().unwrap();
    let receiver = Receiver::default();
    let cb = receiver.start().await.unwrap();
    let agent = Agent::onboard(api, "emulator-retry-agent", &cb)
        .await
        .unwrap();
    receiver.add_secret(&agent.callback_secret);
    let (quote, route, ent) = agent.fund(3).await.unwrap();
    let ent_id = ent["credit_entitlement_id"].as_str().unwrap().to_string();
    let stl = route["settlement_id"].as_str().unwrap();
    // Every SQS batch reaches the queue function twice (at-least-once delivery, as SQS may do).
    let duplicated_before = duplicate_sqs(&info, true).await;
    // The usage receipt (the capture) and the callback run, then their responses are lost:
    // Step Functions retries both tasks. The queue function's first delivery fails too, so SQS
    // redelivers the message.
    for function in ["usage_receipt", "callback", "queue"] {
        add_fault(
            &info,
            json!({"function": function, "error_type": "StoreUnavailable", "after_invoke": true}),
        )
        .await;
    }
    let body = agent.run_request(&quote, &ent, full_evidence(&ent_id, stl), &cb);
    let created = agent.ok("POST", "/runs", Some(&body)).await.unwrap();
    let run_id = created["run_id"].as_str().unwrap().to_string();
    let done = agent
        .wait(&format!("/runs/{run_id}"), Duration::from_secs(120), |r| {
            r["state"] == "callback_delivered" && r["attested"] == true
        })
        .await
        .expect("run delivered despite the retried task");
    assert_eq!(done["next_action"], "ready_for_downstream_agent");
    let balances = agent
        .ok("GET", &format!("/credit-entitlements/{ent_id}"), None)
        .await
        .unwrap()["balances"]
        .clone();
    assert_eq!(
        balances,
        json!({"funded": 3, "available": 2, "held": 0, "captured": 1, "released": 0}),
        "one capture despite the retry"
    );
    let duplicated = duplicate_sqs(&info, false).await - duplicated_before;
    assert!(duplicated >= 1, "the run's message was delivered twice");
    assert_eq!(receiver.verified_for(&run_id).len(), 1, "one callback");
    let ledger = agent.ok("GET", "/ledger/verify", None).await.unwrap();
    assert_eq!(ledger["valid"], true);
    // Each fault really fired, on this run.
    let endpoint = info["endpoint_url"].as_str().unwrap();
    let faults: Value = serde_json::from_slice(
        &reqwest::get(format!("{endpoint}/_emulator/faults"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    for function in ["usage_receipt", "callback", "queue"] {
        assert!(
            faults["fired"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"].as_str().unwrap().ends_with(function)
                    && f["payload"].as_str().unwrap().contains(&run_id)),
            "fault on {function} did not fire for {run_id}: {faults}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_lands_in_the_dead_letter_queue_and_shows_in_get_queue() {
    let _turn = EMULATOR.lock().await;
    let Some(info) = tokenops_tests::emulator_info().await else {
        return;
    };
    duplicate_sqs(&info, false).await;
    let api = info["api_url"].as_str().unwrap();
    let endpoint = info["endpoint_url"].as_str().unwrap();
    let queue_url = info["resources"]["RunQueue"]["url"]
        .as_str()
        .expect("the emulator created RunQueue");
    let receiver = Receiver::default();
    let cb = receiver.start().await.unwrap();
    let agent = Agent::onboard(api, "emulator-poison-agent", &cb)
        .await
        .unwrap();
    let before = agent.ok("GET", "/queue", None).await.unwrap()["queue"].clone();
    let dead_before = before["dead_letter_depth"].as_i64().unwrap();
    assert!(
        before["max_receives"].as_i64().unwrap() > 1,
        "the run queue has a redrive policy: {before}"
    );

    // Not a run message: the queue function fails it on every receive (partial batch failure),
    // so after maxReceiveCount receives SQS moves it to the dead-letter queue.
    let sent = tokenops_local::emulator::sqs_client(endpoint)
        .send_message()
        .queue_url(queue_url)
        .message_body(r#"{"not": "a run message"}"#)
        .send()
        .await
        .expect("SendMessage through the emulator");
    assert!(sent.message_id.is_some(), "SQS accepted the message");
    let after = agent
        .wait("/queue", Duration::from_secs(90), |q| {
            q["queue"]["dead_letter_depth"].as_i64() > Some(dead_before)
        })
        .await
        .expect("the poison message reaches the dead-letter queue");
    assert_eq!(
        after["queue"]["dead_letter_depth"].as_i64().unwrap(),
        dead_before + 1,
        "exactly the poison message was dead-lettered: {after}"
    );
    // The consumer kept running and reported the failures in its heartbeat.
    assert!(
        after["consumer_heartbeat"]["at"].is_string(),
        "heartbeat present: {after}"
    );
}
