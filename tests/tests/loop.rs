//! The loop end to end on the embedded default: both reference scenarios, every function on its
//! `events/` fixture, idempotency, concurrency against a small balance, isolation, bad input,
//! tamper detection, and resume after a crash.

use std::time::Duration;

use serde_json::{json, Value};
use tokenops::ports::Orchestrator;
use tokenops::store::Store;
use tokenops_local::agent::{partial_evidence, Agent};
use tokenops_tests::{funded_agent, runtime, wait_delivered};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_loop_and_evidence_gap_scenarios_complete_and_verify() {
    let rt = runtime("reference").await;
    let payload = tokenops_local::reference::play(&rt.base_url)
        .await
        .expect("both scenarios succeed");
    assert_eq!(payload["loop_type"], "tokenops_full_loop_reference_run");
    assert_eq!(payload["operating_tool"], "tokenops");
    assert_eq!(payload["state"], "callback_delivered");
    assert_eq!(payload["next_action"], "ready_for_downstream_agent");
    let path: Vec<&str> = payload["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(path, tokenops::model::PATH);
    for stage in tokenops::model::PATH {
        let link = &payload["objects"][stage][0];
        assert!(
            link["id"].is_string() && link["url"].as_str().unwrap().starts_with(&rt.base_url),
            "stage {stage} has no link: {payload}"
        );
    }
    rt.shutdown().await;
}

fn fixture(name: &str, vars: &[(&str, &str)]) -> Value {
    let raw: &str = match name {
        "onboarding" => include_str!("../../events/onboarding.json"),
        "trust" => include_str!("../../events/trust.json"),
        "quote" => include_str!("../../events/quote.json"),
        "provider_route" => include_str!("../../events/provider_route.json"),
        "credit_entitlement" => include_str!("../../events/credit_entitlement.json"),
        "run_contract" => include_str!("../../events/run_contract.json"),
        "queue" => include_str!("../../events/queue.json"),
        "tokenops_execution" => include_str!("../../events/tokenops_execution.json"),
        "result_contract" => include_str!("../../events/result_contract.json"),
        "settlement_receipt" => include_str!("../../events/settlement_receipt.json"),
        "usage_receipt" => include_str!("../../events/usage_receipt.json"),
        "callback" => include_str!("../../events/callback.json"),
        "ledger" => include_str!("../../events/ledger.json"),
        "attestation" => include_str!("../../events/attestation.json"),
        other => panic!("no fixture {other}"),
    };
    let mut text = raw.replace("{{nonce}}", &ulid::Ulid::new().to_string());
    for (k, v) in vars {
        text = text.replace(&format!("{{{{{k}}}}}"), v);
    }
    serde_json::from_str(&text).expect("fixture is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_handles_its_event_fixture() {
    let rt = runtime("fixtures").await;
    let f = funded_agent(&rt, "fixture-agent", 5).await;
    let created = f
        .agent
        .ok("POST", "/runs", Some(&f.full_run()))
        .await
        .unwrap();
    let run_id = created["run_id"].as_str().unwrap().to_string();
    let run = wait_delivered(&f.agent, &run_id).await;
    let app = tokenops_local::server::App {
        ctx: rt.ctx.clone(),
        queue: rt.queue.clone(),
        sender: tokenops::ports::HttpSender::new(Duration::from_secs(5))
            .expect("callback HTTP client"),
        provider: tokenops::provider::TestProvider::new(
            &rt.base_url,
            "whsec_dGVzdA==",
            Duration::from_secs(3600),
        ),
        x402: None,
    };
    let http = |ev: Value| {
        let app = app.clone();
        async move {
            tokenops_local::server::dispatch(&app, tokenops_aws::lambda::request_from_apigw_v2(&ev))
                .await
        }
    };
    let key = f.agent.access_key.clone().unwrap();
    let ent_id = f.ent_id();
    let quote_id = f.quote["quote_id"].as_str().unwrap().to_string();
    let vars: Vec<(&str, &str)> = vec![
        ("access_key", &key),
        ("agent_id", &f.agent.agent_id),
        ("run_id", &run_id),
        ("credit_entitlement_id", &ent_id),
        ("quote_id", &quote_id),
    ];

    // API-facing functions: API Gateway v2 events.
    let r = http(fixture("onboarding", &vars)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let onboarded = r.json_body();
    let claim = onboarded["claim_token"].as_str().unwrap().to_string();
    let new_agent = onboarded["agent_id"].as_str().unwrap().to_string();
    let r = http(fixture(
        "trust",
        &[("agent_id", &new_agent), ("claim_token", &claim)],
    ))
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json_body()["access_key"]
        .as_str()
        .unwrap()
        .starts_with("tok_"));
    for (name, status) in [
        ("quote", 201),
        ("provider_route", 201),
        ("credit_entitlement", 200),
        ("run_contract", 200),
    ] {
        let r = http(fixture(name, &vars)).await;
        assert_eq!(
            r.status,
            status,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = http(fixture("run_contract", &vars)).await;
    assert_eq!(r.json_body()["state"], "callback_delivered");

    // The SQS consumer: a redelivered message for a dispatched run starts nothing new.
    let sender =
        tokenops::ports::HttpSender::new(Duration::from_secs(5)).expect("callback HTTP client");
    for d in tokenops_aws::lambda::sqs_deliveries(&fixture("queue", &vars)) {
        let d = d.expect("fixture body is a run message");
        assert_eq!(
            queue::dispatch(&rt.ctx, &rt.orchestrator, &sender, &d)
                .await
                .unwrap(),
            run_id
        );
    }
    assert_eq!(
        rt.orchestrator
            .start(&run_id, json!({"run_id": run_id}))
            .await
            .unwrap(),
        tokenops::ports::Started::AlreadyExists
    );

    // Step Functions tasks: a redelivered task is a no-op returning the object it made.
    let ctx = &rt.ctx;
    let before = tokenops_local::agent::Agent::ok(
        &f.agent,
        "GET",
        &format!("/credit-entitlements/{ent_id}"),
        None,
    )
    .await
    .unwrap();
    for stage in [
        "tokenops_execution",
        "result_contract",
        "settlement_receipt",
        "usage_receipt",
        "callback",
        "ledger",
        "attestation",
    ] {
        let input = fixture(stage, &vars);
        let out = match stage {
            "tokenops_execution" => tokenops_execution::run_task(ctx, input).await,
            "result_contract" => result_contract::run_task(ctx, input).await,
            "settlement_receipt" => settlement_receipt::run_task(ctx, input).await,
            "usage_receipt" => usage_receipt::run_task(ctx, input).await,
            "callback" => callback::run_task(ctx, &sender, input).await,
            "ledger" => ledger::run_task(ctx, input).await,
            _ => attestation::run_task(ctx, input).await,
        }
        .unwrap_or_else(|e| panic!("{stage}: {e}"));
        // Everything the state machine's ResultSelector selects is there, so an execution that
        // runs the path again (a redelivered message or a redrive on Express) passes the stages
        // already done.
        if stage == "tokenops_execution" {
            assert_eq!(out.evidence_status.as_deref(), Some("sufficient"));
        }
        assert_eq!(
            out.object_id,
            run["objects"][stage][0]["id"].as_str().unwrap(),
            "{stage}"
        );
    }
    let after = f
        .agent
        .ok("GET", &format!("/credit-entitlements/{ent_id}"), None)
        .await
        .unwrap();
    assert_eq!(
        before["balances"], after["balances"],
        "redelivered tasks moved no money"
    );
    assert_eq!(
        f.receiver.verified_for(&run_id).len(),
        1,
        "one callback per run"
    );
    // A task on a run id that does not exist is a typed, non-retryable error.
    let err = result_contract::run_task(ctx, json!({"run_id": "run_00000000000000000000000000"}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "RunNotFound");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_post_with_one_idempotency_key_has_one_effect() {
    let rt = runtime("idem").await;
    let f = funded_agent(&rt, "idem-agent", 5).await;
    let body = f.full_run();
    let a = f
        .agent
        .call("POST", "/runs", Some(&body), Some("run-key-1"))
        .await
        .unwrap();
    let b = f
        .agent
        .call("POST", "/runs", Some(&body), Some("run-key-1"))
        .await
        .unwrap();
    assert_eq!((a.status, b.status), (202, 202));
    assert_eq!(a.body["run_id"], b.body["run_id"]);
    let other = f
        .agent
        .call(
            "POST",
            "/runs",
            Some(&json!({"quote_id": "x"})),
            Some("run-key-1"),
        )
        .await
        .unwrap();
    assert_eq!(other.status, 422);
    assert_eq!(other.body["field"], "Idempotency-Key");
    wait_delivered(&f.agent, a.body["run_id"].as_str().unwrap()).await;
    let ent = f
        .agent
        .ok("GET", &format!("/credit-entitlements/{}", f.ent_id()), None)
        .await
        .unwrap();
    assert_eq!(
        ent["balances"],
        json!({"funded": 5, "available": 4, "held": 0, "captured": 1, "released": 0})
    );
    // Quotes too: one key, one quote.
    let q =
        json!({"requested_tool": "tokenops", "requested_capability": "tokenops_result_package"});
    let q1 = f
        .agent
        .call("POST", "/quotes", Some(&q), Some("quote-key"))
        .await
        .unwrap();
    let q2 = f
        .agent
        .call("POST", "/quotes", Some(&q), Some("quote-key"))
        .await
        .unwrap();
    assert_eq!(q1.body["quote_id"], q2.body["quote_id"]);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_runs_against_ten_credits_capture_exactly_ten() {
    let rt = runtime("money").await;
    let f = funded_agent(&rt, "money-agent", 10).await;
    let body = f.full_run();
    let mut handles = Vec::new();
    for _ in 0..50 {
        let (agent, body) = (f.agent.clone(), body.clone());
        handles.push(tokio::spawn(async move {
            agent
                .call("POST", "/runs", Some(&body), None)
                .await
                .unwrap()
        }));
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    for h in handles {
        let r = h.await.unwrap();
        match r.status {
            202 => accepted.push(r.body["run_id"].as_str().unwrap().to_string()),
            409 => {
                assert_eq!(
                    r.body["type"],
                    "https://tokenops.dev/problems/insufficient-credits"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!((accepted.len(), refused), (10, 40));
    for run in &accepted {
        wait_delivered(&f.agent, run).await;
    }
    let ent = f
        .agent
        .ok("GET", &format!("/credit-entitlements/{}", f.ent_id()), None)
        .await
        .unwrap();
    assert_eq!(
        ent["balances"],
        json!({"funded": 10, "available": 0, "held": 0, "captured": 10, "released": 0})
    );
    // Double entry: replaying every transfer gives the same balances and sums to zero.
    let transfers: Vec<tokenops::money::Transfer> = rt
        .ctx
        .store
        .query(&format!("XFER#{}", f.ent_id()), "", None)
        .await
        .unwrap()
        .iter()
        .map(|i| i.decode().unwrap())
        .collect();
    assert_eq!(
        transfers.len(),
        1 + 10 + 10,
        "one funding, ten holds, ten captures"
    );
    let balances = tokenops::money::account_balances(&transfers);
    assert_eq!(balances.values().sum::<i64>(), 0);
    assert_eq!(balances[tokenops::money::REVENUE_ACCOUNT], 10);
    assert_eq!(
        balances[&format!("entitlement:{}:available", f.ent_id())],
        0
    );
    let ledger = f.agent.ok("GET", "/ledger/verify", None).await.unwrap();
    assert_eq!(ledger["valid"], true);
    assert_eq!(ledger["entries"], 70, "7 entries per run, one chain");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_see_only_their_own_objects() {
    let rt = runtime("isolation").await;
    let a = funded_agent(&rt, "agent-a", 2).await;
    let b = funded_agent(&rt, "agent-b", 2).await;
    let run = a
        .agent
        .ok("POST", "/runs", Some(&a.full_run()))
        .await
        .unwrap();
    let run_id = run["run_id"].as_str().unwrap();
    let done = wait_delivered(&a.agent, run_id).await;
    let ids = |stage: &str| {
        done["objects"][stage][0]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for path in [
        format!("/runs/{run_id}"),
        format!("/results/{}", ids("tokenops_execution")),
        format!("/results/{}", ids("result_contract")),
        format!("/receipts/{}", ids("usage_receipt")),
        format!("/receipts/{}", ids("settlement_receipt")),
        format!("/attestations/{}", ids("attestation")),
        format!("/credit-entitlements/{}", a.ent_id()),
        format!("/quotes/{}", a.quote["quote_id"].as_str().unwrap()),
        format!("/agents/{}", a.agent.agent_id),
    ] {
        let r = b.agent.call("GET", &path, None, None).await.unwrap();
        assert_eq!(r.status, 404, "{path} leaked to another agent");
        assert_eq!(r.content_type, "application/problem+json");
        assert_eq!(
            a.agent.call("GET", &path, None, None).await.unwrap().status,
            200,
            "{path}"
        );
    }
    for path in [
        format!("/runs/{run_id}/cancel"),
        format!("/runs/{run_id}/callback/redeliver"),
    ] {
        assert_eq!(
            b.agent
                .call("POST", &path, Some(&json!({})), None)
                .await
                .unwrap()
                .status,
            404
        );
    }
    let b_ledger = b.agent.ok("GET", "/ledger", None).await.unwrap();
    assert_eq!(b_ledger["entries"].as_array().unwrap().len(), 0);
    // A's run id as a ledger filter: 404, as any other foreign id (issue 8.5).
    let path = format!("/ledger?run_id={run_id}");
    let r = b.agent.call("GET", &path, None, None).await.unwrap();
    assert_eq!(
        (r.status, r.content_type.as_str(), r.body["field"].as_str()),
        (404, "application/problem+json", Some("run_id")),
        "{}",
        r.body
    );
    let own = a.agent.ok("GET", &path, None).await.unwrap();
    assert_eq!(own["entries"].as_array().unwrap().len(), 7);
    assert_eq!(
        Agent::anonymous(&rt.base_url)
            .call("GET", &format!("/runs/{run_id}"), None, None)
            .await
            .unwrap()
            .status,
        401
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_problem_json_4xx_and_writes_nothing() {
    let rt = runtime("badinput").await;
    let f = funded_agent(&rt, "bad-input-agent", 3).await;
    let ent_path = format!("/credit-entitlements/{}", f.ent_id());
    let before = f.agent.ok("GET", &ent_path, None).await.unwrap();
    let items_before = tokenops_tests::item_count(&rt).await;
    let raw = |body: Vec<u8>| {
        let a = f.agent.clone();
        async move {
            let r = a
                .http
                .post(format!("{}/runs", a.base))
                .bearer_auth(a.access_key.clone().unwrap())
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            (
                status,
                ct,
                serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap(),
            )
        }
    };
    let mut wrong_type = f.full_run();
    wrong_type["quote_id"] = json!(42);
    let mut unknown = f.full_run();
    unknown["surprise"] = json!(true);
    let mut secret = f.full_run();
    secret["evidence"]["records"][0]["data"]["password"] = json!("hunter2hunter2");
    let mut bad_category = f.full_run();
    bad_category["evidence"]["records"][0]["category"] = json!("gossip");
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"quote_id\": ".to_vec(), 400, "body"),
        (b"[]".to_vec(), 422, "body"),
        (serde_json::to_vec(&wrong_type).unwrap(), 422, "quote_id"),
        (serde_json::to_vec(&unknown).unwrap(), 422, "surprise"),
        (
            serde_json::to_vec(&secret).unwrap(),
            422,
            "evidence.records[0].data.password",
        ),
        (
            serde_json::to_vec(&bad_category).unwrap(),
            422,
            "evidence.records[0].category",
        ),
        (vec![b' '; 300 * 1024], 413, "body"),
    ];
    for (body, status, field) in cases {
        let (s, ct, problem) = raw(body).await;
        assert_eq!(
            (s, ct.as_str()),
            (status, "application/problem+json"),
            "{problem}"
        );
        assert_eq!(problem["field"], field, "{problem}");
        assert_eq!(problem["status"], status, "RFC 9457 `status`: {problem}");
        assert!(problem["type"]
            .as_str()
            .unwrap()
            .starts_with("https://tokenops.dev/problems/"));
        assert!(
            !problem.to_string().contains("hunter2"),
            "a secret was echoed"
        );
    }
    for (method, path) in [
        ("GET", "/runs/run_00000000000000000000000000"),
        ("GET", "/results/result_nope"),
        ("GET", "/receipts/nope"),
        ("GET", "/attestations/att_x"),
        ("POST", "/runs/run_nope/cancel"),
        ("GET", "/nowhere"),
    ] {
        let r = f
            .agent
            .call(method, path, Some(&json!({})), None)
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.content_type.as_str()),
            (404, "application/problem+json"),
            "{method} {path}"
        );
    }
    assert_eq!(
        f.agent
            .call("DELETE", "/runs/run_x", None, None)
            .await
            .unwrap()
            .status,
        405
    );
    // Nothing moved and nothing was written: the table holds exactly the items it held before.
    assert_eq!(
        f.agent.ok("GET", &ent_path, None).await.unwrap()["balances"],
        before["balances"]
    );
    assert_eq!(tokenops_tests::item_count(&rt).await, items_before);
    let ledger = f.agent.ok("GET", "/ledger", None).await.unwrap();
    assert_eq!(ledger["entries"].as_array().unwrap().len(), 0);
    assert_eq!(rt.queue.dead_letters().await.unwrap().len(), 0);
    let stats = f.agent.ok("GET", "/queue", None).await.unwrap();
    assert_eq!(stats["runs"]["pending"], 0);
    rt.shutdown().await;
}

/// The stages take the run's contract from the execution input, and only the one the run links:
/// a contract whose digest is not the link's is read from the table instead, never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_uses_the_input_contract_only_when_it_is_the_runs() {
    let rt = runtime("contract-input").await;
    let f = funded_agent(&rt, "contract-input-agent", 1).await;
    let run = f
        .agent
        .ok("POST", "/runs", Some(&f.full_run()))
        .await
        .unwrap();
    let run_id = run["run_id"].as_str().unwrap();
    wait_delivered(&f.agent, run_id).await;
    let store = &rt.ctx.store;
    let rec = &tokenops::stage::load(store, run_id).await.unwrap();
    // What a Task state passes: its Parameters, `execution` being `$$.Execution.Input`.
    let input = json!({"run_id": run_id, "execution": tokenops::stage::execution_input(store, run_id).await});
    let stored = input["execution"]["contract"].clone();
    assert_eq!(
        stored["run_id"], run_id,
        "the execution input carries the contract"
    );
    let contract = |input: Value| async move {
        let before = store.requests();
        let c = tokenops::stage::run_contract(store, &input, rec)
            .await
            .unwrap();
        (
            serde_json::to_value(c).unwrap(),
            store.requests().since(&before).reads,
        )
    };
    assert_eq!(
        contract(input.clone()).await,
        (stored.clone(), 0),
        "the run's own: no read"
    );
    let mut forged = input.clone();
    forged["execution"]["contract"]["callback_url"] = json!("https://attacker.example/hook");
    assert_eq!(
        contract(forged).await,
        (stored.clone(), 1),
        "not the run's: read instead"
    );
    let absent = json!({"run_id": run_id, "execution": {"run_id": run_id}});
    assert_eq!(contract(absent).await, (stored, 1), "none: read");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_ledger_entry_and_attestation_are_rejected() {
    let rt = runtime("tamper").await;
    let f = funded_agent(&rt, "tamper-agent", 2).await;
    let run = f
        .agent
        .ok("POST", "/runs", Some(&f.full_run()))
        .await
        .unwrap();
    let done = wait_delivered(&f.agent, run["run_id"].as_str().unwrap()).await;
    let dir = tokenops_tests::temp_dir("tamper-files");
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n).to_string_lossy().to_string();

    let mut export = f.agent.ok("GET", "/ledger", None).await.unwrap();
    std::fs::write(p("ledger.json"), export.to_string()).unwrap();
    assert!(
        tokenops_local::verify::ledger_export(&p("ledger.json"))
            .unwrap()
            .valid
    );
    export["entries"][5]["credits"] = json!(-100);
    std::fs::write(p("ledger-tampered.json"), export.to_string()).unwrap();
    let report = tokenops_local::verify::ledger_export(&p("ledger-tampered.json")).unwrap();
    assert!(!report.valid);
    assert_eq!(report.first_broken.unwrap().seq, 6);

    let att = f
        .agent
        .ok(
            "GET",
            &format!(
                "/attestations/{}",
                done["objects"]["attestation"][0]["id"].as_str().unwrap()
            ),
            None,
        )
        .await
        .unwrap();
    let keys = f.agent.ok("GET", "/keys", None).await.unwrap();
    std::fs::write(p("att.json"), att.to_string()).unwrap();
    std::fs::write(p("keys.json"), keys.to_string()).unwrap();
    let st = tokenops_local::verify::attestation(&p("att.json"), &p("keys.json")).unwrap();
    assert_eq!(st.subject.len(), 5);
    let mut statement: Value = att["statement"].clone();
    statement["subject"][0]["digest"]["sha256"] = json!("00".repeat(32));
    let mut forged = att.clone();
    use base64::Engine as _;
    forged["envelope"]["payload"] =
        json!(base64::engine::general_purpose::STANDARD.encode(statement.to_string()));
    std::fs::write(p("att-tampered.json"), forged.to_string()).unwrap();
    assert!(tokenops_local::verify::attestation(&p("att-tampered.json"), &p("keys.json")).is_err());
    // The signed envelope intact, the plain `statement` copy beside it edited (issue 8.7): agents
    // read that copy, so it must equal the signed payload.
    let mut copy_edited = att.clone();
    copy_edited["statement"]["subject"][0]["digest"]["sha256"] = json!("00".repeat(32));
    std::fs::write(p("att-copy-tampered.json"), copy_edited.to_string()).unwrap();
    let err = tokenops_local::verify::attestation(&p("att-copy-tampered.json"), &p("keys.json"))
        .expect_err("a statement copy that differs from the signed payload is rejected");
    assert!(err.to_string().contains("statement"), "{err}");
    let mut copy_extra = att.clone();
    copy_extra["statement"]["predicate"]["credits"] = json!(1_000_000);
    std::fs::write(p("att-copy-extra.json"), copy_extra.to_string()).unwrap();
    assert!(
        tokenops_local::verify::attestation(&p("att-copy-extra.json"), &p("keys.json")).is_err()
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_evidence_opens_an_exception_and_cancel_releases_the_hold() {
    let rt = runtime("cancel").await;
    let f = funded_agent(&rt, "cancel-agent", 3).await;
    let mut req = f.full_run();
    req["evidence"] = partial_evidence(&f.ent_id(), &f.settlement_id());
    let run = f.agent.ok("POST", "/runs", Some(&req)).await.unwrap();
    let run_id = run["run_id"].as_str().unwrap();
    let waiting = f
        .agent
        .wait(&format!("/runs/{run_id}"), Duration::from_secs(30), |r| {
            r["state"] == "exception_open"
        })
        .await
        .unwrap();
    assert_eq!(waiting["next_action"], "supply_missing_evidence");
    let ticket = f
        .agent
        .ok(
            "GET",
            &format!(
                "/exceptions/{}",
                waiting["objects"]["exception_recovery"][0]["id"]
                    .as_str()
                    .unwrap()
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(ticket["object_type"], "agent_exception_ticket");
    assert_eq!(
        ticket["missing_items"],
        json!([
            "matching payment request artifact",
            "usage receipt tied to credit entitlement"
        ])
    );
    assert_eq!(ticket["safe_to_replay"], false);
    let held = f
        .agent
        .ok("GET", &format!("/credit-entitlements/{}", f.ent_id()), None)
        .await
        .unwrap();
    assert_eq!(held["balances"]["held"], 1);
    let cancelled = f
        .agent
        .ok("POST", &format!("/runs/{run_id}/cancel"), Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    let again = f
        .agent
        .call(
            "POST",
            &format!("/runs/{run_id}/cancel"),
            Some(&json!({})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(again.status, 200, "cancel is idempotent");
    let ent = f
        .agent
        .ok("GET", &format!("/credit-entitlements/{}", f.ent_id()), None)
        .await
        .unwrap();
    assert_eq!(
        ent["balances"],
        json!({"funded": 3, "available": 3, "held": 0, "captured": 0, "released": 1})
    );
    let late = f
        .agent
        .call(
            "POST",
            &format!("/runs/{run_id}/evidence"),
            Some(&json!({"evidence": {}})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(late.status, 409);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_callback_is_recorded_and_redelivered_on_request() {
    let rt = runtime("callback").await;
    let f = funded_agent(&rt, "callback-agent", 2).await;
    *f.receiver.fail_first.lock().unwrap() = 100;
    let run = f
        .agent
        .ok("POST", "/runs", Some(&f.full_run()))
        .await
        .unwrap();
    let run_id = run["run_id"].as_str().unwrap();
    let failed = f
        .agent
        .wait(&format!("/runs/{run_id}"), Duration::from_secs(30), |r| {
            r["state"] == "callback_failed" && r["attested"] == true
        })
        .await
        .unwrap();
    assert_eq!(failed["next_action"], "redeliver_callback");
    *f.receiver.fail_first.lock().unwrap() = 0;
    let record = f
        .agent
        .ok(
            "POST",
            &format!("/runs/{run_id}/callback/redeliver"),
            Some(&json!({})),
        )
        .await
        .unwrap();
    assert_eq!(record["status"], "delivered");
    assert_eq!(
        record["attempts"].as_array().unwrap().len(),
        5,
        "4 failed attempts + the redelivery, all recorded"
    );
    let done = f
        .agent
        .ok("GET", &format!("/runs/{run_id}"), None)
        .await
        .unwrap();
    assert_eq!(
        (done["state"].as_str(), done["next_action"].as_str()),
        (
            Some("callback_delivered"),
            Some("ready_for_downstream_agent")
        )
    );
    assert_eq!(f.receiver.verified_for(run_id).len(), 1);
    rt.shutdown().await;
}

/// Issue 8.1: ids of any shape or length are refused at the edge with a 4xx problem naming the
/// field — never the store's key-size error surfacing as 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_any_shape_or_length_get_4xx_naming_the_field() {
    let rt = runtime("ids").await;
    let f = funded_agent(&rt, "ids-agent", 2).await;
    let items_before = tokenops_tests::item_count(&rt).await;
    let long = |n: usize| "a".repeat(n);
    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    for n in [44, 81, 300, 2100] {
        cases.extend([
            ("GET", format!("/receipts/usage_{}", long(n)), "receipt_id"),
            ("GET", format!("/receipts/srcpt_{}", long(n)), "receipt_id"),
            ("GET", format!("/results/result_{}", long(n)), "result_id"),
            (
                "GET",
                format!("/exceptions/exc_{}", long(n)),
                "exception_id",
            ),
            ("GET", format!("/runs/run_{}", long(n)), "run_id"),
            ("GET", format!("/quotes/quote_{}", long(n)), "quote_id"),
            (
                "GET",
                format!("/settlements/stl_{}", long(n)),
                "settlement_id",
            ),
            (
                "GET",
                format!("/credit-entitlements/cred_{}", long(n)),
                "credit_entitlement_id",
            ),
            (
                "GET",
                format!("/attestations/att_{}", long(n)),
                "attestation_id",
            ),
            ("GET", format!("/agents/agent_{}", long(n)), "agent_id"),
            (
                "POST",
                format!("/agents/agent_{}/credentials", long(n)),
                "agent_id",
            ),
            (
                "POST",
                format!("/agents/{}/credentials", long(n)),
                "agent_id",
            ),
            (
                "POST",
                format!("/providers/{}/confirmations", long(n)),
                "provider",
            ),
            ("GET", format!("/schemas/{}", long(n)), "object"),
            ("GET", format!("/ledger?run_id=run_{}", long(n)), "run_id"),
        ]);
    }
    for junk in [
        "USAGE_X",
        "usage_%00",
        "usage_%2e%2e",
        "usage_a%20b",
        "usage_é",
    ] {
        cases.push(("GET", format!("/receipts/{junk}"), "receipt_id"));
        cases.push(("POST", format!("/agents/{junk}/credentials"), "agent_id"));
    }
    cases.push(("GET", "/ledger?run_id=nope".into(), "run_id"));
    cases.push(("GET", "/ledger?run_id=".into(), "run_id"));
    let mut wrong = Vec::new();
    for (method, path, field) in &cases {
        let r = f
            .agent
            .call(method, path, Some(&json!({"claim_token": "x"})), None)
            .await
            .unwrap();
        if !(400..500).contains(&r.status)
            || r.content_type != "application/problem+json"
            || r.body["field"].as_str() != Some(*field)
        {
            let shown: String = path.chars().take(70).collect();
            let body: String = r.body.to_string().chars().take(200).collect();
            wrong.push(format!("{method} {shown}… → {} {body}", r.status));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert_eq!(tokenops_tests::item_count(&rt).await, items_before);
    rt.shutdown().await;
}

/// Issue 8.3/8.4: a 401 names the scheme (`WWW-Authenticate`, RFC 9110 §11.6.1 / RFC 6750), the
/// scheme is case-insensitive, and a 405 lists the path's methods in `Allow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_names_the_scheme_and_wrong_method_lists_allow() {
    let rt = runtime("authhdr").await;
    let f = funded_agent(&rt, "authhdr-agent", 1).await;
    let key = f.agent.access_key.clone().unwrap();
    let path = format!("/agents/{}", f.agent.agent_id);
    let get = |auth: Option<String>| {
        let http = f.agent.http.clone();
        let url = format!("{}{path}", f.agent.base);
        async move {
            let mut req = http.get(url);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            req.send().await.unwrap()
        }
    };
    let r = get(None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap()),
        Some(r#"Bearer realm="tokenops""#)
    );
    let r = get(Some("Bearer tok_unknown".into())).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap()),
        Some(r#"Bearer realm="tokenops", error="invalid_token""#)
    );
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = get(Some(format!("{scheme} {key}"))).await;
        assert_eq!(r.status(), 200, "scheme {scheme}");
    }
    let r = get(Some(format!("Basic {key}"))).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    // The provider confirmation is authenticated by a signature; its 401 names that scheme.
    let r = f
        .agent
        .http
        .post(format!(
            "{}/providers/{}/confirmations",
            f.agent.base,
            tokenops::provider::TEST_PROVIDER
        ))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Standard-Webhooks ")));

    let r = f
        .agent
        .http
        .delete(format!("{}/runs/run_x", f.agent.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.headers().get("allow").map(|v| v.to_str().unwrap()),
        Some("GET")
    );
    let r = f
        .agent
        .http
        .get(format!("{}/runs", f.agent.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.headers().get("allow").map(|v| v.to_str().unwrap()),
        Some("POST")
    );
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], 405, "RFC 9457 names the member `status`");
    assert!(body.get("status_code").is_none(), "{body}");
    rt.shutdown().await;
}

/// Issue 8.6: `GET /queue` shows an agent its own queued runs only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_monitor_shows_an_agent_only_its_own_runs() {
    let rt = runtime("queuescope").await;
    let a = funded_agent(&rt, "queue-a", 2).await;
    let b = funded_agent(&rt, "queue-b", 2).await;
    let run = a
        .agent
        .ok("POST", "/runs", Some(&a.full_run()))
        .await
        .unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_string();
    wait_delivered(&a.agent, &run_id).await;
    // A replay of A's run waiting for dispatch for an hour (the pending index, as the enqueuing
    // stage writes it, backdated; no queue message, so nothing dispatches it).
    let hour_ago = (tokenops::ids::now().unix_timestamp_nanos() / 1_000_000) as i64 - 3_600_000;
    let pending = tokenops::store::Item::new(
        tokenops::store::Key::new("PENDING", format!("{run_id}-replay-9")),
        "pending_run",
        None,
        json!({"run_id": run_id, "replay": 9}),
    )
    .num("queued_at_ms", hour_ago);
    rt.ctx
        .store
        .transact(vec![tokenops::store::Write::put(pending)])
        .await
        .unwrap();
    let mine = a.agent.ok("GET", "/queue", None).await.unwrap();
    assert_eq!(mine["runs"]["pending"], 1, "{mine}");
    assert!(mine["runs"]["oldest_age_seconds"].as_i64().unwrap() >= 3600);
    let theirs = b.agent.ok("GET", "/queue", None).await.unwrap();
    assert_eq!(theirs["runs"]["pending"], 0, "{theirs}");
    assert_eq!(theirs["runs"]["oldest_age_seconds"], 0, "{theirs}");
    // Nothing else in B's view reflects A's waiting run (no global depth or age).
    let text = theirs.to_string();
    assert!(!text.contains(&run_id), "{theirs}");
    assert!(
        theirs["queue"].get("oldest_age_seconds").is_none()
            && theirs["queue"].get("depth").is_none()
            && theirs["queue"].get("in_flight").is_none(),
        "global figures shown to an agent: {theirs}"
    );
    // The consumer's heartbeat (service health) is still there for everyone.
    assert!(theirs["consumer_heartbeat"]["at"].is_string(), "{theirs}");
    rt.shutdown().await;
}
