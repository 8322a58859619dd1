//! `tokenops bench`: N reference loops at a given concurrency against an API (the embedded
//! default's, or with `--api` the emulator's or a deployed stack's); prints runs/s, p50/p99 run
//! latency (POST /runs → callback_delivered and attested) and, where the store is in this
//! process, DynamoDB requests per run (counted in the store adapter).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;

use crate::agent::{full_evidence, Agent, Receiver};

pub struct BenchReport {
    pub runs: usize,
    pub concurrency: usize,
    pub wall_ms: u128,
    pub runs_per_sec: f64,
    pub p50_ms: u128,
    pub p99_ms: u128,
    pub requests_per_run: Option<f64>,
}

/// `requests` reads the store's request counter, when there is one to read.
pub async fn run(
    base_url: &str,
    runs: usize,
    concurrency: usize,
    requests: impl Fn() -> Option<u64>,
) -> Result<BenchReport, String> {
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let receiver = Receiver::default();
    let cb = receiver.start().await.map_err(|e| e.to_string())?;
    let agent = Agent::onboard(base_url, "bench-agent", &cb)
        .await
        .map_err(|e| e.to_string())?;
    receiver.add_secret(&agent.callback_secret);
    let (quote, route, ent) = agent.fund(runs as i64).await.map_err(|e| e.to_string())?;
    let evidence = full_evidence(
        ent["credit_entitlement_id"].as_str().unwrap_or(""),
        route["settlement_id"].as_str().unwrap_or(""),
    );
    let body = Arc::new(agent.run_request(&quote, &ent, evidence, &cb));
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let requests_before = requests();
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for i in 0..runs {
        let (agent, body, sem) = (agent.clone(), body.clone(), sem.clone());
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
            let start = Instant::now();
            let created = agent
                .ok("POST", "/runs", Some(&body))
                .await
                .map_err(|e| e.to_string())?;
            let run_id = created["run_id"].as_str().unwrap_or_default().to_string();
            agent
                .wait(&format!("/runs/{run_id}"), Duration::from_secs(300), |r| {
                    r["state"] == "callback_delivered" && r["attested"] == true
                })
                .await
                .map_err(|e| e.to_string())?;
            if (i + 1) % 10 == 0 {
                eprintln!("bench: {} runs done", i + 1);
            }
            Ok::<u128, String>(start.elapsed().as_millis())
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.push(h.await.map_err(|e| e.to_string())??);
    }
    let wall = t0.elapsed();
    let requests = requests()
        .zip(requests_before)
        .map(|(after, before)| after - before);
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    Ok(BenchReport {
        runs,
        concurrency,
        wall_ms: wall.as_millis(),
        runs_per_sec: runs as f64 / wall.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        requests_per_run: requests.map(|r| r as f64 / runs as f64),
    })
}

impl BenchReport {
    pub fn to_json(&self) -> serde_json::Value {
        json!({"runs": self.runs, "concurrency": self.concurrency, "wall_ms": self.wall_ms, "runs_per_sec": (self.runs_per_sec * 100.0).round() / 100.0,
               "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "dynamodb_requests_per_run": self.requests_per_run.map(|r| (r * 10.0).round() / 10.0)})
    }
}
