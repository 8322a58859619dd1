//! The loop through the deployed shape on an emulator: HTTP API → API functions → SQS → queue
//! function → Step Functions (moto's engine executing infra/statemachine.asl.json) → every task
//! function binary → callback received and verified. Also the failure path as deployed: a stage
//! failing for good → the queue function's synchronous Express execution ends FAILED → the
//! failure handler; `POST /runs/{id}/redrive` → the path started again; the relay schedule.
//! `make test` starts moto and
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
/// The emulator's faults and switches are global (a fault until cleared fails *every* matching
/// invocation), so these tests take turns instead of failing each other's runs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// Drops every pending injected fault; returns how many there were.
async fn clear_faults(info: &Value) -> u64 {
    let endpoint = info["endpoint_url"].as_str().unwrap();
    let r = reqwest::Client::new()
        .delete(format!("{endpoint}/_emulator/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    v["cleared"].as_u64().unwrap()
}

/// `GET` of the emulator's control API (`/_emulator/...`).
async fn control(info: &Value, path: &str) -> Value {
    let endpoint = info["endpoint_url"].as_str().unwrap();
    let body = reqwest::get(format!("{endpoint}{path}"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

async fn fired_faults(info: &Value) -> Vec<Value> {
    control(info, "/_emulator/faults").await["fired"]
        .as_array()
        .unwrap()
        .clone()
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
    let _serial = SERIAL.lock().await;
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

/// Typed clients generated from one plane work against the other: the document the deployed
/// shape serves (the onboarding function behind the emulator's HTTP API) is the embedded
/// default's, but for the server URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_plane_serves_the_same_openapi_document() {
    let Some(info) = tokenops_tests::emulator_info().await else {
        return;
    };
    let api = info["api_url"].as_str().unwrap();
    let rt = tokenops_tests::runtime("openapi-planes").await;
    let get = |base: String| async move {
        let body = reqwest::get(format!("{base}/openapi.json"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let mut doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["servers"][0]["url"], base.as_str());
        doc.as_object_mut().unwrap().remove("servers");
        doc
    };
    let aws = get(api.to_string()).await;
    let local = get(rt.base_url.clone()).await;
    assert!(aws == local, "the two planes serve different documents");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_messages_and_retried_tasks_have_one_effect() {
    let _serial = SERIAL.lock().await;
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
            // The queue function also gets schedule and EventBridge events: aim at SQS batches.
            json!({"function": function, "error_type": "StoreUnavailable", "after_invoke": true,
                   "contains": if function == "queue" { "aws:sqs" } else { "run_id" }}),
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
    // The queue function runs the path synchronously, so the run is delivered inside the first
    // delivery; wait for the second copy of the batch, and for it to run the path again.
    let mut duplicated = 0;
    for _ in 0..300 {
        let state = control(&info, "/_emulator/duplicate-sqs").await;
        duplicated = state["duplicated_batches"].as_u64().unwrap() - duplicated_before;
        if duplicated >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(duplicated >= 1, "the run's message was delivered twice");
    tokio::time::sleep(Duration::from_secs(3)).await;
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
    duplicate_sqs(&info, false).await;
    assert_eq!(receiver.verified_for(&run_id).len(), 1, "one callback");
    let ledger = agent.ok("GET", "/ledger/verify", None).await.unwrap();
    assert_eq!(ledger["valid"], true);
    // Each fault really fired, on this run.
    let faults = control(&info, "/_emulator/faults").await;
    for function in ["usage_receipt", "callback", "queue"] {
        assert!(
            faults["fired"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(function))
                    && f["payload"].as_str().unwrap().contains(&run_id)),
            "fault on {function} did not fire for {run_id}: {faults}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_lands_in_the_dead_letter_queue_and_shows_in_get_queue() {
    let _serial = SERIAL.lock().await;
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

fn balances(ent: &Value) -> (i64, i64, i64, i64) {
    let b = &ent["balances"];
    (
        b["funded"].as_i64().unwrap(),
        b["available"].as_i64().unwrap(),
        b["held"].as_i64().unwrap(),
        b["captured"].as_i64().unwrap(),
    )
}

/// tests/tests/failure.rs's scenario on the deployed shape: the queue function runs the Express
/// execution synchronously (`StartSyncExecution`, played by the emulator over moto), the stage
/// fails for good (a non-retried error on every invocation, until cleared), the execution ends
/// FAILED and the queue function hands it to the failure handler. The redrive goes through the
/// queue as deployed and starts the path again: the stages that had succeeded answer without a
/// second effect. A further execution of the delivered run (what a redelivered message does)
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_failing_for_good_fails_the_run_and_a_redrive_delivers_it_once() {
    let _serial = SERIAL.lock().await;
    let _turn = EMULATOR.lock().await;
    let Some(info) = tokenops_tests::emulator_info().await else {
        return;
    };
    duplicate_sqs(&info, false).await;
    clear_faults(&info).await;
    let api = info["api_url"].as_str().unwrap();
    let endpoint = info["endpoint_url"].as_str().unwrap();
    let sm = info["resources"]["RunPathStateMachine"]["arn"]
        .as_str()
        .expect("the emulator created RunPathStateMachine")
        .to_string();
    let sfn = tokenops_local::emulator::sfn_client(endpoint);
    let described = sfn
        .describe_state_machine()
        .state_machine_arn(&sm)
        .send()
        .await
        .expect("DescribeStateMachine");
    assert_eq!(
        described.r#type().as_str(),
        "EXPRESS",
        "the template's run path"
    );
    let receiver = Receiver::default();
    let cb = receiver.start().await.unwrap();
    let agent = Agent::onboard(api, "emulator-failing-agent", &cb)
        .await
        .unwrap();
    receiver.add_secret(&agent.callback_secret);
    let (quote, route, ent) = agent.fund(5).await.unwrap();
    let ent_id = ent["credit_entitlement_id"].as_str().unwrap().to_string();
    let stl = route["settlement_id"].as_str().unwrap();
    // An error the state machine does not retry, on every invocation of the fourth stage.
    add_fault(
        &info,
        json!({"function": "settlement_receipt", "error_type": "Internal", "until_cleared": true}),
    )
    .await;
    let body = agent.run_request(&quote, &ent, full_evidence(&ent_id, stl), &cb);
    let created = agent
        .call("POST", "/runs", Some(&body), Some("fails"))
        .await
        .unwrap();
    assert_eq!(created.status, 202, "{}", created.body);
    let run = created.body["run_id"].as_str().unwrap().to_string();
    let failed = agent
        .wait(&format!("/runs/{run}"), Duration::from_secs(90), |r| {
            r["state"] == "failed" && r["failure"]["callback_status"] == "delivered"
        })
        .await
        .expect("the run becomes failed (sync execution → failure handler) and the agent is told");
    assert_eq!(failed["next_action"], "redrive_run");
    let failure = &failed["failure"];
    assert_eq!(failure["stage"], "settlement_receipt");
    assert_eq!(failure["failed_from"], "result_contracted");
    assert_eq!(
        failure["execution"],
        run.as_str(),
        "the queue function named the execution"
    );
    assert_eq!(
        failure["error"], "Internal",
        "the task's error, carried by StartSyncExecution's answer"
    );
    assert_eq!(failure["hold_released"], true);
    assert_eq!(failure["ledgered"], true);
    assert_eq!(failed["attested"], false);
    let ticket_id = failure["exception_id"].as_str().unwrap();
    let ticket = agent
        .ok("GET", &format!("/exceptions/{ticket_id}"), None)
        .await
        .unwrap();
    assert_eq!(ticket["exception_type"], "stage_failure");
    assert_eq!(ticket["failed_stage"], "settlement_receipt");
    assert!(ticket["error"].as_str().unwrap().starts_with("Internal"));
    let ent_now = agent
        .ok("GET", &format!("/credit-entitlements/{ent_id}"), None)
        .await
        .unwrap();
    assert_eq!(balances(&ent_now), (5, 5, 0, 0), "hold released: {ent_now}");
    let told: Vec<Value> = receiver
        .verified_for(&run)
        .into_iter()
        .filter(|c| c["event_type"] == "tokenops.run.failed")
        .collect();
    assert_eq!(told.len(), 1, "one signed run.failed callback");
    assert_eq!(told[0]["failure"]["stage"], "settlement_receipt");
    let ledger = agent
        .ok("GET", &format!("/ledger?run_id={run}"), None)
        .await
        .unwrap();
    let types: Vec<&str> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entry_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["run_failed", "hold_release"], "{ledger}");
    // The fault hit this run's stage (and nothing healed it: it fired, moto did not retry).
    let fired = fired_faults(&info).await;
    assert!(
        fired.iter().any(|f| f["function"]
            .as_str()
            .is_some_and(|n| n.ends_with("settlement_receipt"))
            && f["payload"].as_str().unwrap().contains(&run)),
        "{fired:?}"
    );

    // Redrive: the stage healed, the agent redrives; the same key replays; delivered, captured once.
    assert_eq!(clear_faults(&info).await, 1);
    let path = format!("/runs/{run}/redrive");
    let first = agent
        .call("POST", &path, None, Some("redrive-1"))
        .await
        .unwrap();
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.body["state"], "result_contracted");
    let again = agent
        .call("POST", &path, None, Some("redrive-1"))
        .await
        .unwrap();
    assert_eq!((again.status, &again.body), (202, &first.body));
    let delivered = agent
        .wait(&format!("/runs/{run}"), Duration::from_secs(90), |r| {
            r["state"] == "callback_delivered" && r["attested"] == true
        })
        .await
        .expect("the redriven run is delivered");
    assert_eq!(delivered["redrives"], 1);
    assert!(delivered.get("failure").is_none());
    let not_failed = agent
        .call("POST", &path, None, Some("redrive-2"))
        .await
        .unwrap();
    assert_eq!(not_failed.status, 409, "{}", not_failed.body);
    let ent_after = agent
        .ok("GET", &format!("/credit-entitlements/{ent_id}"), None)
        .await
        .unwrap();
    assert_eq!(
        balances(&ent_after),
        (5, 4, 0, 1),
        "captured once: {ent_after}"
    );
    let completed = |receiver: &Receiver| {
        receiver
            .verified_for(&run)
            .into_iter()
            .filter(|c| c["event_type"] == "tokenops.run.completed")
            .count()
    };
    assert_eq!(completed(&receiver), 1, "one run.completed callback");
    let verify = agent.ok("GET", "/ledger/verify", None).await.unwrap();
    assert_eq!(verify["valid"], true, "{verify}");
    // The delivered run's path once more, as a redelivered message would start it: every stage
    // answers what it made, nothing moves.
    let again = sfn
        .start_sync_execution()
        .state_machine_arn(&sm)
        .name(&run)
        .input(json!({ "run_id": run }).to_string())
        .send()
        .await
        .expect("StartSyncExecution through the emulator");
    assert_eq!(again.status().as_str(), "SUCCEEDED", "{again:?}");
    assert!(again.execution_arn().contains(":express:"), "{again:?}");
    let ent_end = agent
        .ok("GET", &format!("/credit-entitlements/{ent_id}"), None)
        .await
        .unwrap();
    assert_eq!(balances(&ent_end), (5, 4, 0, 1), "still captured once");
    assert_eq!(completed(&receiver), 1, "still one run.completed callback");
}

/// The relay schedule (played by the emulator: a `Scheduled Event` every `--schedule-interval`)
/// re-sends a run whose enqueue was lost: every SQS `SendMessage` fails at the emulator's front
/// while the run is created, so `POST /runs` stores the run (and its `PENDING` outbox entry)
/// and answers 202 — the relay owns the send from there. Once the relay's bound has passed
/// (30 s), a tick sends the message again and the run is delivered, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_schedule_resends_a_run_whose_enqueue_was_lost() {
    let _serial = SERIAL.lock().await;
    use tokenops::store::Store;
    let _turn = EMULATOR.lock().await;
    let Some(info) = tokenops_tests::emulator_info().await else {
        return;
    };
    duplicate_sqs(&info, false).await;
    clear_faults(&info).await;
    let schedule = info["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["function"].as_str().unwrap().ends_with("-queue"))
        .cloned()
        .expect("the emulator plays the relay schedule");
    let period = schedule["period_seconds"].as_f64().unwrap();
    assert!(
        period <= 10.0,
        "make test runs the emulator with a short --schedule-interval: {schedule}"
    );
    let api = info["api_url"].as_str().unwrap();
    let endpoint = info["endpoint_url"].as_str().unwrap();
    let table = info["resources"]["Table"]["name"].as_str().unwrap();
    let store = tokenops_aws::DynamoStore::new(tokenops_aws::local_client(endpoint), table);
    let pending = || async {
        store
            .query("PENDING", "run_", None)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.key.sk)
            .collect::<std::collections::BTreeSet<String>>()
    };
    let receiver = Receiver::default();
    let cb = receiver.start().await.unwrap();
    let agent = Agent::onboard(api, "emulator-relay-agent", &cb)
        .await
        .unwrap();
    receiver.add_secret(&agent.callback_secret);
    let (quote, route, ent) = agent.fund(2).await.unwrap();
    let ent_id = ent["credit_entitlement_id"].as_str().unwrap().to_string();
    let stl = route["settlement_id"].as_str().unwrap();
    let before = pending().await;
    add_fault(
        &info,
        json!({"aws_action": "AmazonSQS.SendMessage", "error_type": "InternalError",
               "until_cleared": true}),
    )
    .await;
    let body = agent.run_request(&quote, &ent, full_evidence(&ent_id, stl), &cb);
    let lost = agent
        .call("POST", "/runs", Some(&body), Some("lost"))
        .await
        .unwrap();
    assert_eq!(lost.status, 202, "{}", lost.body);
    assert_eq!(clear_faults(&info).await, 1);
    assert!(
        fired_faults(&info)
            .await
            .iter()
            .any(|f| f["aws_action"] == "AmazonSQS.SendMessage"),
        "the send was refused at the front"
    );
    let new: Vec<String> = pending().await.difference(&before).cloned().collect();
    assert_eq!(
        new.len(),
        1,
        "the run was stored with its outbox entry: {new:?}"
    );
    let run = new[0].clone();
    let stranded = agent
        .ok("GET", &format!("/runs/{run}"), None)
        .await
        .unwrap();
    assert_eq!(stranded["state"], "queued", "{stranded}");
    let started = std::time::Instant::now();
    let done = agent
        .wait(&format!("/runs/{run}"), Duration::from_secs(90), |r| {
            r["state"] == "callback_delivered" && r["attested"] == true
        })
        .await
        .expect("the relay re-sent the run and it was delivered");
    assert_eq!(done["next_action"], "ready_for_downstream_agent");
    eprintln!(
        "relay: run delivered {:.1} s after its enqueue was lost",
        started.elapsed().as_secs_f64()
    );
    assert!(
        pending().await.is_disjoint(&[run.clone()].into()),
        "outbox entry cleared"
    );
    assert_eq!(receiver.verified_for(&run).len(), 1, "one callback");
    let e = agent
        .ok("GET", &format!("/credit-entitlements/{ent_id}"), None)
        .await
        .unwrap();
    assert_eq!(balances(&e), (2, 1, 0, 1), "captured once: {e}");
}
