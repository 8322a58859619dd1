//! `tokenops bench`: N reference loops at each of one or more concurrencies against an API (the
//! embedded default's, or with `--api` the emulator's or a deployed stack's). Prints runs/s and
//! p50/p99 run latency (POST /runs → callback delivered and attested) and, on the embedded
//! default, what one run costs in AWS requests and what 1 M runs cost at the list prices of
//! `infra/aws-prices.json`:
//!
//! - DynamoDB requests of the loop's handlers, by kind (reads, single writes, transactions and
//!   their items). The local queue, orchestrator and relay stand in for SQS, Step Functions and a
//!   schedule: their store traffic is counted apart (`DynamoStore::counted_apart`).
//! - The bench agent's own reads are not the loop's cost: it waits for the callback (no polling
//!   while the run goes), then reads the run until it is attested; those reads are counted and
//!   subtracted at the cost of one `GET /runs/{id}`, measured at the end of each level.
//! - SQS requests (send, non-empty receive, delete), the run path's executions (priced as the
//!   deployed Express workflow: a request and its duration, rounded up to 100 ms; its state
//!   transitions are counted too, to price the Standard shape beside it), Lambda invocations (the
//!   API request, the queue function once per message, each Task state) and the queue function's
//!   wait on each synchronous execution, HTTP API requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokenops::store::{RequestCounts, Store};
use tokio::sync::Semaphore;

use crate::agent::{full_evidence, Agent};
use crate::orchestrator::EngineCounts;
use crate::runtime::Runtime;
use tokenops::queue::QueueOps;

/// `infra/aws-prices.json`, compiled in: the figures the cost comes from are in the repo.
const PRICES_JSON: &str = include_str!("../../infra/aws-prices.json");

#[derive(Deserialize, Debug, Clone)]
pub struct Prices {
    pub region: String,
    pub as_of: String,
    pub lambda_per_million_requests: f64,
    pub lambda_arm64_per_gb_second: f64,
    pub lambda_memory_mb: f64,
    pub lambda_billed_ms_per_invocation: f64,
    pub step_functions_standard_per_transition: f64,
    pub step_functions_express_per_million_requests: f64,
    pub step_functions_express_per_gb_second: f64,
    pub step_functions_express_memory_mb: f64,
    pub dynamodb_on_demand_per_million_write_units: f64,
    pub dynamodb_on_demand_per_million_read_units: f64,
    pub sqs_standard_per_million_requests: f64,
    pub http_api_per_million_requests: f64,
}

impl Prices {
    pub fn list() -> Result<Prices, String> {
        serde_json::from_str(PRICES_JSON).map_err(|e| format!("infra/aws-prices.json: {e}"))
    }
}

/// What one run asks of AWS (averages over a bench level).
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct PerRun {
    pub dynamodb_reads: f64,
    pub dynamodb_writes: f64,
    pub dynamodb_transactions: f64,
    pub dynamodb_transaction_items: f64,
    pub dynamodb_requests: f64,
    /// Capacity units by item size: what on-demand bills.
    pub dynamodb_read_units: f64,
    pub dynamodb_write_units: f64,
    pub sqs_requests: f64,
    pub state_transitions: f64,
    /// Execution time per run, rounded up to 100 ms per execution as Express bills it.
    pub workflow_billed_ms: f64,
    pub lambda_invocations: f64,
    pub http_api_requests: f64,
    /// The bench agent's reads while waiting (not part of the above).
    pub agent_reads: f64,
}

/// Dollars per 1 M runs, by service, for the deployed shape: the run path as an Express
/// workflow that the queue function runs synchronously.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct Cost {
    /// Requests and GB-seconds: the handlers, and the queue function waiting on each execution.
    pub lambda: f64,
    /// Express: a request per run and its duration at the minimum 64 MB.
    pub step_functions: f64,
    pub dynamodb: f64,
    pub sqs: f64,
    pub http_api: f64,
    pub total: f64,
    /// The same workflow as Step Functions Standard (per state transition, no consumer wait),
    /// and the total with it: why the path is Express.
    pub step_functions_standard: f64,
    pub total_with_standard: f64,
}

impl Cost {
    pub fn per_million_runs(r: &PerRun, p: &Prices) -> Cost {
        let m = 1_000_000.0;
        let gb = p.lambda_memory_mb / 1024.0;
        let gb_s = r.lambda_invocations * p.lambda_billed_ms_per_invocation / 1000.0 * gb;
        let lambda = m
            * (r.lambda_invocations * p.lambda_per_million_requests / m
                + gb_s * p.lambda_arm64_per_gb_second);
        // The queue function is billed while StartSyncExecution waits.
        let wait = m * r.workflow_billed_ms / 1000.0 * gb * p.lambda_arm64_per_gb_second;
        let standard = m * r.state_transitions * p.step_functions_standard_per_transition;
        let express = p.step_functions_express_per_million_requests
            + m * r.workflow_billed_ms / 1000.0
                * (p.step_functions_express_memory_mb / 1024.0)
                * p.step_functions_express_per_gb_second;
        let dynamodb = r.dynamodb_write_units * p.dynamodb_on_demand_per_million_write_units
            + r.dynamodb_read_units * p.dynamodb_on_demand_per_million_read_units;
        let sqs = r.sqs_requests * p.sqs_standard_per_million_requests;
        let http_api = r.http_api_requests * p.http_api_per_million_requests;
        let round = |x: f64| (x * 100.0).round() / 100.0;
        Cost {
            lambda: round(lambda + wait),
            step_functions: round(express),
            dynamodb: round(dynamodb),
            sqs: round(sqs),
            http_api: round(http_api),
            total: round(lambda + wait + express + dynamodb + sqs + http_api),
            step_functions_standard: round(standard),
            total_with_standard: round(lambda + standard + dynamodb + sqs + http_api),
        }
    }
}

pub struct BenchReport {
    pub runs: usize,
    pub concurrency: usize,
    pub wall_ms: u128,
    pub runs_per_sec: f64,
    pub p50_ms: u128,
    pub p99_ms: u128,
    /// Embedded default only: what a run asks of AWS, and its price.
    pub per_run: Option<PerRun>,
    pub cost: Option<Cost>,
}

/// Counters of the embedded default, read before and after a level.
#[derive(Clone, Copy)]
struct Snapshot {
    handlers: RequestCounts,
    queue: QueueOps,
    engine: EngineCounts,
}

fn snapshot(rt: &Runtime) -> Snapshot {
    Snapshot {
        handlers: rt.ctx.store.requests(),
        queue: rt.queue.ops(),
        engine: rt.orchestrator.counts(),
    }
}

/// One level: `runs` loops at `concurrency`. `rt` is the embedded runtime serving `base_url`
/// when there is one (then requests are counted and priced).
pub async fn run(
    base_url: &str,
    runs: usize,
    concurrency: usize,
    rt: Option<&Runtime>,
) -> Result<BenchReport, String> {
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let (agent, receiver, cb) =
        Agent::onboard_listening(base_url, &format!("bench-agent-c{concurrency}"))
            .await
            .map_err(|e| e.to_string())?;
    let (quote, route, ent) = agent.fund(runs as i64).await.map_err(|e| e.to_string())?;
    let evidence = full_evidence(
        ent["credit_entitlement_id"].as_str().unwrap_or(""),
        route["settlement_id"].as_str().unwrap_or(""),
    );
    let body = Arc::new(agent.run_request(&quote, &ent, evidence, &cb));
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let agent_gets = Arc::new(AtomicU64::new(0));
    let before = rt.map(snapshot);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for i in 0..runs {
        let (agent, body, sem, receiver, gets) = (
            agent.clone(),
            body.clone(),
            sem.clone(),
            receiver.clone(),
            agent_gets.clone(),
        );
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
            let start = Instant::now();
            let created = agent
                .ok("POST", "/runs", Some(&body))
                .await
                .map_err(|e| e.to_string())?;
            let run_id = created["run_id"].as_str().unwrap_or_default().to_string();
            // The callback says the run is delivered; no API read (and no polling) while it goes.
            if !receiver.wait_for(&run_id, Duration::from_secs(300)).await {
                return Err(format!("run {run_id}: no callback in 300 s"));
            }
            // The attestation follows the callback: read until it is there.
            loop {
                gets.fetch_add(1, Ordering::Relaxed);
                let r = agent
                    .ok("GET", &format!("/runs/{run_id}"), None)
                    .await
                    .map_err(|e| e.to_string())?;
                if r["attested"] == true {
                    break;
                }
                if start.elapsed() > Duration::from_secs(300) {
                    return Err(format!("run {run_id}: not attested in 300 s"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if (i + 1) % 50 == 0 {
                eprintln!("bench c={concurrency}: {} runs done", i + 1);
            }
            Ok::<(u128, String), String>((start.elapsed().as_millis(), run_id))
        }));
    }
    let mut lat = Vec::new();
    let mut last_run = String::new();
    for h in handles {
        let (ms, run_id) = h.await.map_err(|e| e.to_string())??;
        lat.push(ms);
        last_run = run_id;
    }
    let wall = t0.elapsed();
    let after = rt.map(snapshot);
    let per_run = match (rt, before, after) {
        (Some(rt), Some(b), Some(a)) => {
            // The cost of one agent read, measured now that nothing else runs.
            let probes = 5u64;
            let p0 = rt.ctx.store.requests();
            for _ in 0..probes {
                agent
                    .ok("GET", &format!("/runs/{last_run}"), None)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let per_get = rt.ctx.store.requests().since(&p0);
            Some(per_run(
                &a,
                &b,
                agent_gets.load(Ordering::Relaxed),
                &per_get,
                probes,
                runs,
            ))
        }
        _ => None,
    };
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    let cost = match &per_run {
        Some(r) => Some(Cost::per_million_runs(r, &Prices::list()?)),
        None => None,
    };
    Ok(BenchReport {
        runs,
        concurrency,
        wall_ms: wall.as_millis(),
        runs_per_sec: runs as f64 / wall.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        per_run,
        cost,
    })
}

fn per_run(
    after: &Snapshot,
    before: &Snapshot,
    agent_gets: u64,
    per_get: &RequestCounts,
    probes: u64,
    runs: usize,
) -> PerRun {
    let n = runs as f64;
    let d = after.handlers.since(&before.handlers);
    // The agent's reads at the measured cost of one (reads only: a GET writes nothing).
    let agent_reads = agent_gets as f64 * per_get.reads as f64 / probes as f64;
    let reads = (d.reads as f64 - agent_reads).max(0.0);
    let agent_read_units = agent_gets as f64 * per_get.read_units as f64 / probes as f64;
    let read_units = (d.read_units as f64 - agent_read_units).max(0.0);
    let sqs = after.queue.since(&before.queue);
    let transitions = after.engine.transitions - before.engine.transitions;
    let tasks = after.engine.tasks - before.engine.tasks;
    // Lambda: the API request (POST /runs), the queue function (one message per invocation, as
    // deployed: `BatchSize: 1`), each Task state.
    let invocations = 2 * runs as u64 + tasks;
    let r = |x: f64| (x / n * 10.0).round() / 10.0;
    PerRun {
        dynamodb_reads: r(reads),
        dynamodb_writes: r(d.writes as f64),
        dynamodb_transactions: r(d.transactions as f64),
        dynamodb_transaction_items: r(d.transaction_items as f64),
        dynamodb_requests: r(reads + d.writes as f64 + d.transactions as f64),
        dynamodb_read_units: r(read_units),
        dynamodb_write_units: r(d.write_units as f64),
        sqs_requests: r(sqs.total() as f64),
        state_transitions: r(transitions as f64),
        workflow_billed_ms: r((after.engine.billed_ms - before.engine.billed_ms) as f64),
        lambda_invocations: r(invocations as f64),
        http_api_requests: 1.0,
        agent_reads: r(agent_reads),
    }
}

impl BenchReport {
    pub fn to_json(&self) -> serde_json::Value {
        json!({"runs": self.runs, "concurrency": self.concurrency, "wall_ms": self.wall_ms,
               "runs_per_sec": (self.runs_per_sec * 100.0).round() / 100.0,
               "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
               "per_run": self.per_run, "cost_per_million_runs_usd": self.cost})
    }
}

/// The table `make bench` prints: one row per concurrency, then what the cost comes from.
pub fn table(reports: &[BenchReport]) -> String {
    let mut out = String::from(
        "| concurrency | runs/s | p50 ms | p99 ms | DynamoDB req/run (r/w/tx) | DynamoDB units/run (read/write) | SQS req/run | transitions/run | Lambda inv/run | $ per 1 M runs |\n\
         |---:|---:|---:|---:|---|---|---:|---:|---:|---:|\n",
    );
    for r in reports {
        let (ddb, units, sqs, tr, inv) = match &r.per_run {
            Some(p) => (
                format!(
                    "{} ({}/{}/{})",
                    p.dynamodb_requests,
                    p.dynamodb_reads,
                    p.dynamodb_writes,
                    p.dynamodb_transactions
                ),
                format!("{}/{}", p.dynamodb_read_units, p.dynamodb_write_units),
                p.sqs_requests.to_string(),
                p.state_transitions.to_string(),
                p.lambda_invocations.to_string(),
            ),
            None => ("–".into(), "–".into(), "–".into(), "–".into(), "–".into()),
        };
        let cost = r
            .cost
            .as_ref()
            .map_or("–".to_string(), |c| format!("{:.2}", c.total));
        out.push_str(&format!(
            "| {} | {:.1} | {} | {} | {ddb} | {units} | {sqs} | {tr} | {inv} | {cost} |\n",
            r.concurrency, r.runs_per_sec, r.p50_ms, r.p99_ms
        ));
    }
    if let (Some(c), Ok(p)) = (reports.last().and_then(|r| r.cost.as_ref()), Prices::list()) {
        out.push_str(&format!(
            "\n$ per 1 M runs at {} list prices of {} (infra/aws-prices.json): Lambda {:.2}, Step Functions Express {:.2}, DynamoDB {:.2}, SQS {:.2}, HTTP API {:.2} = {:.2}\n",
            p.region, p.as_of, c.lambda, c.step_functions, c.dynamodb, c.sqs, c.http_api, c.total
        ));
        let (billed, transitions) = reports
            .last()
            .and_then(|r| r.per_run.as_ref())
            .map_or((0.0, 0.0), |r| (r.workflow_billed_ms, r.state_transitions));
        out.push_str(&format!(
            "Express: 1 request + {billed} ms billed per run at {} MB (the queue function waits as long, at {} MB). As Step Functions Standard ({transitions} transitions per run) the path would cost {:.2} instead of {:.2}: total {:.2}\n",
            p.step_functions_express_memory_mb, p.lambda_memory_mb, c.step_functions_standard, c.step_functions, c.total_with_standard
        ));
    }
    out
}

/// The emulator front's per-action timings (`GET /_emulator/stats`): where a run's time goes in
/// `tokenops emulator`. `reset` clears them first (before a level).
pub async fn emulator_stats(
    front: &str,
    reset: bool,
) -> Result<std::collections::BTreeMap<String, crate::emulator::front::Timing>, String> {
    let url = format!("{}/_emulator/stats", front.trim_end_matches('/'));
    let http = reqwest::Client::new();
    let req = if reset {
        http.delete(&url)
    } else {
        http.get(&url)
    };
    let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    if reset {
        return Ok(Default::default());
    }
    let body = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
}

/// One row per action, most time first: requests and milliseconds per run, mean and max.
pub fn emulator_table(
    stats: &std::collections::BTreeMap<String, crate::emulator::front::Timing>,
    runs: usize,
) -> String {
    let runs = runs.max(1) as f64;
    let mut rows: Vec<_> = stats.iter().collect();
    rows.sort_by_key(|(_, t)| std::cmp::Reverse(t.total_us));
    let mut out = String::from(
        "| through the emulator front | per run | ms per run | mean ms | max ms |\n|---|---:|---:|---:|---:|\n",
    );
    for (what, t) in rows {
        out.push_str(&format!(
            "| {what} | {:.1} | {:.1} | {:.2} | {:.1} |\n",
            t.count as f64 / runs,
            t.total_us as f64 / 1000.0 / runs,
            t.total_us as f64 / 1000.0 / t.count.max(1) as f64,
            t.max_us as f64 / 1000.0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_price_table_parses_and_prices_each_service() {
        let p = Prices::list().unwrap();
        let one_of_each = PerRun {
            dynamodb_reads: 1.0,
            dynamodb_writes: 1.0,
            dynamodb_transaction_items: 1.0,
            dynamodb_read_units: 1.0,
            dynamodb_write_units: 3.0,
            sqs_requests: 1.0,
            state_transitions: 1.0,
            workflow_billed_ms: 1000.0,
            lambda_invocations: 1.0,
            http_api_requests: 1.0,
            ..Default::default()
        };
        let c = Cost::per_million_runs(&one_of_each, &p);
        // Express: $1 per million requests + 1 s at 64 MB (1/16 GB-s) per run.
        assert_eq!(
            c.step_functions,
            ((1.0 + 1e6 / 16.0 * 0.00001667) * 100.0_f64).round() / 100.0
        );
        assert_eq!(
            c.step_functions_standard, 25.0,
            "$25 per million transitions"
        );
        assert_eq!(c.sqs, 0.4);
        assert_eq!(c.http_api, 1.0);
        // 3 write units (1 write + 1 transaction item at 2), 1 read unit.
        assert_eq!(
            c.dynamodb,
            ((3.0 * 0.625 + 0.125) * 100.0_f64).round() / 100.0
        );
        // 1 request, 30 ms of a handler and 1 s of the consumer's wait, at 256 MB.
        assert_eq!(
            c.lambda,
            ((0.2 + 1.03 * 0.25 * 0.0000133334 * 1e6) * 100.0_f64).round() / 100.0,
            "{c:?}"
        );
        // The total adds the unrounded parts: within a cent per part of their rounded sum.
        let parts = c.lambda + c.step_functions + c.dynamodb + c.sqs + c.http_api;
        assert!((c.total - parts).abs() <= 0.03, "{c:?}");
    }
}
