//! The runtime killed mid-run resumes the run on restart: `tokenops serve` exits (as a crash
//! would) right after checkpointing the `ResultContract` state; a new process on the same data dir
//! resumes the execution and the run reaches `callback_delivered`, with one capture and one callback.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokenops_local::agent::{full_evidence, Agent, Receiver};

fn binary() -> std::path::PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/tokenops (built by `cargo test --workspace`).
    let exe = std::env::current_exe().expect("test exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("tokenops");
    assert!(
        bin.exists(),
        "{} not built: run the workspace tests (cargo test --workspace)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(dir: &std::path::Path, port: u16, crash_after: Option<&str>) -> Child {
    let mut cmd = Command::new(binary());
    cmd.args(["serve", "--port", &port.to_string(), "--data-dir"])
        .arg(dir)
        .env("TOKENOPS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(s) = crash_after {
        cmd.args(["--crash-after-state", s]);
    }
    cmd.spawn().expect("tokenops serve starts")
}

async fn wait_up(base: &str) {
    let start = Instant::now();
    while reqwest::get(format!("{base}/manifest")).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_killed_mid_run_resumes_on_restart() {
    let dir = tokenops_tests::temp_dir("resume");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut first = serve(&dir, port, Some("ResultContract"));
    wait_up(&base).await;

    let receiver = Receiver::default();
    let cb = receiver.start().await.unwrap();
    let agent = Agent::onboard(&base, "resume-agent", &cb).await.unwrap();
    receiver.add_secret(&agent.callback_secret);
    let (quote, route, ent) = agent.fund(3).await.unwrap();
    let ent_id = ent["credit_entitlement_id"].as_str().unwrap();
    let body = agent.run_request(
        &quote,
        &ent,
        full_evidence(ent_id, route["settlement_id"].as_str().unwrap()),
        &cb,
    );
    let run = agent.ok("POST", "/runs", Some(&body)).await.unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_string();

    // The process dies right after the ResultContract checkpoint (exit code 86 = fault injection).
    let start = Instant::now();
    let status = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "runtime did not reach the crash point"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(86));
    assert!(
        receiver.verified_for(&run_id).is_empty(),
        "no callback before the crash"
    );

    let mut second = serve(&dir, port, None);
    wait_up(&base).await;
    let done = agent
        .wait(&format!("/runs/{run_id}"), Duration::from_secs(60), |r| {
            r["state"] == "callback_delivered" && r["attested"] == true
        })
        .await
        .expect("run resumed after restart");
    assert_eq!(done["next_action"], "ready_for_downstream_agent");
    let ent_after = agent
        .ok("GET", &format!("/credit-entitlements/{ent_id}"), None)
        .await
        .unwrap();
    assert_eq!(
        ent_after["balances"],
        json!({"funded": 3, "available": 2, "held": 0, "captured": 1, "released": 0})
    );
    assert_eq!(receiver.verified_for(&run_id).len(), 1);
    assert_eq!(
        agent.ok("GET", "/ledger/verify", None).await.unwrap()["valid"],
        true
    );
    second.kill().ok();
    second.wait().ok();
    let _ = std::fs::remove_dir_all(&dir);
}
