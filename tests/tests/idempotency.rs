//! Idempotency that holds (spec §7: same key + same body → the first response; another body →
//! refused), under concurrency and for operations whose effect leaves the store (issue 8).

use std::time::Duration;

use serde_json::json;
use tokenops_local::agent::{partial_evidence, Agent};
use tokenops_tests::{funded_agent, runtime};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callback_redelivery_honours_the_idempotency_key() {
    let rt = runtime("idem-redeliver").await;
    let f = funded_agent(&rt, "redeliver-agent", 2).await;
    *f.receiver.fail_first.lock().unwrap() = 100;
    let run = f
        .agent
        .ok("POST", "/runs", Some(&f.full_run()))
        .await
        .unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_string();
    f.agent
        .wait(&format!("/runs/{run_id}"), Duration::from_secs(30), |r| {
            r["state"] == "callback_failed" && r["attested"] == true
        })
        .await
        .unwrap();
    *f.receiver.fail_first.lock().unwrap() = 0;
    let path = format!("/runs/{run_id}/callback/redeliver");
    let body = json!({});
    // 20 concurrent requests with one key: one delivery.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (agent, path, body) = (f.agent.clone(), path.clone(), body.clone());
        calls.spawn(async move {
            agent
                .call("POST", &path, Some(&body), Some("rd-1"))
                .await
                .unwrap()
        });
    }
    let mut ok_bodies = Vec::new();
    while let Some(r) = calls.join_next().await {
        let r = r.unwrap();
        match r.status {
            200 => ok_bodies.push(r.body),
            409 => {
                assert_eq!(
                    r.body["type"],
                    "https://tokenops.dev/problems/idempotency-key-in-use"
                );
                assert!(r.header("retry-after").is_some());
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    assert!(!ok_bodies.is_empty());
    assert!(
        ok_bodies.iter().all(|b| b == &ok_bodies[0]),
        "one first response"
    );
    assert_eq!(
        f.receiver.verified_for(&run_id).len(),
        1,
        "20 same-key calls, one delivery"
    );
    // 5 more, one after another: replays of the first response, no delivery.
    for _ in 0..5 {
        let r = f
            .agent
            .call("POST", &path, Some(&body), Some("rd-1"))
            .await
            .unwrap();
        assert_eq!((r.status, &r.body), (200, &ok_bodies[0]));
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
    }
    assert_eq!(
        f.receiver.verified_for(&run_id).len(),
        1,
        "sequential replays send nothing"
    );
    // The same key with another body is refused.
    let other = f
        .agent
        .call("POST", &path, Some(&json!({"again": true})), Some("rd-1"))
        .await
        .unwrap();
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.body["field"], "Idempotency-Key");
    // A new key is a new request: a second delivery, on purpose.
    let fresh = f
        .agent
        .call("POST", &path, Some(&body), Some("rd-2"))
        .await
        .unwrap();
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    assert_eq!(fresh.header("idempotent-replayed"), None);
    assert_eq!(f.receiver.verified_for(&run_id).len(), 2);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cancels_with_one_key_return_one_body() {
    let rt = runtime("idem-cancel").await;
    let f = funded_agent(&rt, "cancel-agent", 2).await;
    let req = f.agent.run_request(
        &f.quote,
        &f.ent,
        partial_evidence(&f.ent_id(), &f.settlement_id()),
        &f.callback_url,
    );
    let run = f.agent.ok("POST", "/runs", Some(&req)).await.unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_string();
    f.agent
        .wait(&format!("/runs/{run_id}"), Duration::from_secs(30), |r| {
            r["state"] == "exception_open"
        })
        .await
        .unwrap();
    let path = format!("/runs/{run_id}/cancel");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (agent, path) = (f.agent.clone(), path.clone());
        calls.spawn(async move {
            agent
                .call("POST", &path, None, Some("cancel-1"))
                .await
                .unwrap()
        });
    }
    let mut bodies = Vec::new();
    let mut fresh = 0;
    while let Some(r) = calls.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        if r.header("idempotent-replayed").is_none() {
            fresh += 1;
        }
        bodies.push(r.body);
    }
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "20 same-key cancels, one body"
    );
    assert_eq!(fresh, 1, "one first response, 19 replays that say so");
    let ent = f
        .agent
        .ok("GET", &format!("/credit-entitlements/{}", f.ent_id()), None)
        .await
        .unwrap();
    assert_eq!(
        (
            ent["balances"]["held"].as_i64(),
            ent["balances"]["released"].as_i64()
        ),
        (Some(0), Some(1))
    );
    rt.shutdown().await;
}

/// Two anonymous callers (two client addresses on loopback) may use the same key for different
/// requests; one caller reusing its key for another body is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_keys_are_scoped_by_caller() {
    let rt = runtime("idem-anon").await;
    let port = rt.addr.port();
    let from = |ip: [u8; 4]| {
        let mut a = Agent::anonymous(&format!("http://127.0.0.1:{port}"));
        a.http = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap();
        a
    };
    let manifest = |name: &str| {
        json!({"name": name, "owner_contact": "ops@example.com", "requested_tools": ["tokenops"],
               "callback_url": "http://127.0.0.1:9/callbacks", "description": "scoped keys"})
    };
    let a = from([127, 0, 0, 1]);
    let b = from([127, 0, 0, 2]);
    let ra = a
        .call(
            "POST",
            "/agents",
            Some(&manifest("alpha")),
            Some("shared-key"),
        )
        .await
        .unwrap();
    assert_eq!(ra.status, 201, "{}", ra.body);
    let rb = b
        .call(
            "POST",
            "/agents",
            Some(&manifest("beta")),
            Some("shared-key"),
        )
        .await
        .unwrap();
    assert_eq!(
        rb.status, 201,
        "another caller's key does not collide: {}",
        rb.body
    );
    assert_ne!(ra.body["agent_id"], rb.body["agent_id"]);
    let again = a
        .call(
            "POST",
            "/agents",
            Some(&manifest("alpha")),
            Some("shared-key"),
        )
        .await
        .unwrap();
    assert_eq!(
        (again.status, &again.body["agent_id"]),
        (201, &ra.body["agent_id"])
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let reused = a
        .call(
            "POST",
            "/agents",
            Some(&manifest("gamma")),
            Some("shared-key"),
        )
        .await
        .unwrap();
    assert_eq!(reused.status, 422, "{}", reused.body);
    rt.shutdown().await;
}
