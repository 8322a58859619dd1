//! Shared test helpers: a fresh runtime per test and a funded agent.

use std::path::PathBuf;

use serde_json::Value;
use tokenops_local::agent::{Agent, Receiver};
use tokenops_local::runtime::{Options, Runtime};

/// The repository's root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The `tokenops` binary beside the running test (`cargo test --workspace` builds it).
pub fn tokenops_binary() -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/tokenops.
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("tokenops")
}

pub fn temp_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "tokenops-test-{tag}-{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    ))
}

pub async fn runtime(tag: &str) -> Runtime {
    let mut opts = Options::new(temp_dir(tag), 0);
    opts.callback_retry.base_delay_ms = 20;
    Runtime::start(opts).await.expect("local runtime starts")
}

pub struct Funded {
    pub agent: Agent,
    pub receiver: Receiver,
    pub callback_url: String,
    pub quote: Value,
    pub route: Value,
    pub ent: Value,
}

impl Funded {
    pub fn ent_id(&self) -> String {
        self.ent["credit_entitlement_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    pub fn settlement_id(&self) -> String {
        self.route["settlement_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    pub fn full_run(&self) -> Value {
        self.agent.run_request(
            &self.quote,
            &self.ent,
            tokenops_local::agent::full_evidence(&self.ent_id(), &self.settlement_id()),
            &self.callback_url,
        )
    }
}

pub async fn funded_agent(rt: &Runtime, name: &str, credits: i64) -> Funded {
    let (agent, receiver, callback_url) = Agent::onboard_listening(&rt.base_url, name)
        .await
        .expect("onboard");
    let (quote, route, ent) = agent.fund(credits).await.expect("fund");
    Funded {
        agent,
        receiver,
        callback_url,
        quote,
        route,
        ent,
    }
}

pub async fn wait_delivered(agent: &Agent, run_id: &str) -> Value {
    agent
        .wait(
            &format!("/runs/{run_id}"),
            std::time::Duration::from_secs(60),
            |r| r["state"] == "callback_delivered" && r["attested"] == true,
        )
        .await
        .expect("run delivered and attested")
}

/// Every item in the runtime's table (a full scan): tests assert that refused requests write nothing.
pub async fn item_count(rt: &Runtime) -> usize {
    let client = tokenops_aws::local_client(&rt.dynamodb_endpoint);
    let mut start = None;
    let mut n = 0usize;
    loop {
        let page = client
            .scan()
            .table_name(tokenops_local::runtime::TABLE)
            .select(aws_sdk_dynamodb::types::Select::Count)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan");
        n += page.count() as usize;
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            return n;
        }
    }
}

/// The emulator's info (`GET {TOKENOPS_EMULATOR}/_emulator/info`: `endpoint_url`, `api_url`,
/// `upstream`, `resources`), or None when no emulator is configured: the caller then says
/// "skipped" and passes, unless `TOKENOPS_REQUIRE_EMULATOR` is set (CI), which makes it a failure.
pub async fn emulator_info() -> Option<Value> {
    let Ok(endpoint) = std::env::var("TOKENOPS_EMULATOR") else {
        assert!(
            std::env::var("TOKENOPS_REQUIRE_EMULATOR").is_err(),
            "TOKENOPS_REQUIRE_EMULATOR is set but TOKENOPS_EMULATOR is not"
        );
        eprintln!("skipped: TOKENOPS_EMULATOR is not set (make test starts the emulator)");
        return None;
    };
    let body = reqwest::get(format!("{}/_emulator/info", endpoint.trim_end_matches('/')))
        .await
        .expect("emulator reachable")
        .bytes()
        .await
        .expect("emulator info");
    Some(serde_json::from_slice(&body).expect("emulator info is JSON"))
}
pub mod x402;

/// Runs an agent script (`local/mcp/drive.py`, `local/x402/mcp_pay.py`) that prints the agent's
/// callback signing secret as its first JSON line — handed to `receiver` before the run's
/// callback arrives — and then its report; returns the report. Fails the test if the script
/// fails or takes longer than `limit`.
pub async fn run_agent_script(
    mut cmd: tokio::process::Command,
    name: &str,
    receiver: &Receiver,
    limit: std::time::Duration,
) -> Value {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{name} runs: {e}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut report = None;
    let read = async {
        while let Some(line) = lines.next_line().await.expect("the script's output") {
            let v: Value = serde_json::from_str(&line).expect("a JSON line");
            match v["callback_signing_secret"].as_str() {
                Some(secret) => receiver.add_secret(secret),
                None => report = Some(v),
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or_else(|_| panic!("{name} finishes within {limit:?}"));
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{name} failed (its stderr is above)");
    report.unwrap_or_else(|| panic!("{name}'s report"))
}
