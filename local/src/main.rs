//! `tokenops` — the local runtime and CLI.
//!
//! - `tokenops serve` — the HTTP API on 127.0.0.1 with the embedded default.
//! - `tokenops reference-run` — the whole loop (and the evidence-gap path) on a fresh data dir.
//! - `tokenops redrive RUN` — the local operator redrives a failed run.
//! - `tokenops verify attestation|ledger` — offline verification.
//! - `tokenops bench` — N loops at a concurrency; runs/s, p50/p99, DynamoDB requests per run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// The embedded default allocates per request on every side of loopback HTTP (client, engine,
/// API); with glibc malloc that was a fifth of its CPU under load (perf, `make bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokenops_local::orchestrator::Faults;
use tokenops_local::runtime::{Options, Runtime};
use tokenops_local::{bench, paid_run, reference, verify};

#[derive(Parser)]
#[command(
    name = "tokenops",
    version,
    about = "TokenOps: paid agent work, carried end to end, with proof objects"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API on 127.0.0.1 (embedded DynamoDB, local queue and orchestrator).
    Serve {
        #[arg(long, default_value_t = 8787)]
        port: u16,
        #[arg(long, default_value = ".tokenops")]
        data_dir: PathBuf,
        /// Fault injection for the resume test: exit right after this ASL state's checkpoint.
        #[arg(long, hide = true)]
        crash_after_state: Option<String>,
        /// The relay's bound: outbox entries (runs not dispatched, payments not confirmed,
        /// failures not handled) older than this are acted on again.
        #[arg(long, default_value_t = 30)]
        relay_after_secs: u64,
        /// fsync every commit of the embedded store (SQLite synchronous=FULL), so that commits
        /// also survive an OS crash or power loss; by default they survive a killed process.
        #[arg(long)]
        fsync_each_commit: bool,
        #[command(flatten)]
        x402: X402Args,
    },
    /// Play an agent through all 14 stages (and the evidence-gap path) on a fresh data dir.
    ReferenceRun {
        /// Data dir (default: a new temporary directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Pay the run over x402 instead: the info file of `local/x402/peers.py up` (a local
        /// chain, the test token, the official SDK's facilitator); `make run-x402` starts them.
        #[arg(long)]
        x402_peers: Option<PathBuf>,
    },
    /// Redrive a failed run from the stage that failed (as the local operator: the key is in the
    /// data dir). The server must be running on that data dir.
    Redrive {
        run_id: String,
        #[arg(long, default_value = ".tokenops")]
        data_dir: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:8787")]
        api: String,
    },
    /// TokenOps as MCP tools over stdio, for desktop LLM agents: every tool calls the API at
    /// --api. The access key: --key (or TOKENOPS_ACCESS_KEY), or the one `claim_credentials`
    /// returns when the agent onboards through the tools.
    Mcp {
        #[arg(long, default_value = "http://127.0.0.1:8787")]
        api: String,
        #[arg(long, env = "TOKENOPS_ACCESS_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Verify an attestation or a ledger export offline.
    Verify {
        #[command(subcommand)]
        what: VerifyCmd,
    },
    /// The deployed shape without Docker: runs the function binaries behind a Lambda Invoke API
    /// and an HTTP API, over an upstream AWS emulator (moto server: start it with MOTO_PORT set to
    /// --listen's port). Resources come from infra/template.yaml.
    Emulator {
        /// The upstream emulator (moto server).
        #[arg(long, default_value = "http://127.0.0.1:5000")]
        upstream: String,
        /// The AWS endpoint this serves (Lambda Invoke + forwarding); moto's MOTO_PORT.
        #[arg(long, default_value = "127.0.0.1:5001")]
        listen: String,
        /// The HTTP API (API Gateway v2 events to the functions).
        #[arg(long, default_value = "127.0.0.1:8790")]
        api_listen: String,
        #[arg(long, default_value = "infra/template.yaml")]
        template: PathBuf,
        #[arg(long, default_value = "tokenops")]
        stack: String,
        /// Directory of the function binaries (target/debug, or cargo lambda's target/lambda).
        #[arg(long, default_value = "target/debug")]
        bin_dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        max_instances: usize,
        /// Override every queue's visibility timeout (seconds), e.g. for fast redelivery in tests.
        #[arg(long)]
        visibility_timeout: Option<i64>,
        /// Write the emulator's info JSON (API URL, endpoint, resources) to this file once ready.
        #[arg(long)]
        info_file: Option<PathBuf>,
        /// Fire every Schedule event of the template this often (seconds) instead of its
        /// rate(…) expression, e.g. a fast relay in tests.
        #[arg(long)]
        schedule_interval: Option<f64>,
        /// NAME=VALUE: a template parameter (e.g. X402FacilitatorUrl=http://127.0.0.1:4021) or
        /// an environment variable of every function; repeatable.
        #[arg(long = "set", value_parser = parse_set)]
        set: Vec<(String, String)>,
    },
    /// Run N reference loops at a concurrency and print throughput, latency and request counts.
    Bench {
        /// Runs per concurrency level.
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// One level or several, comma-separated (e.g. 1,4,16,32,64): a row each.
        #[arg(long, value_delimiter = ',', default_value = "8")]
        concurrency: Vec<usize>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Bench a running deployment instead of the embedded default: its API base URL (the
        /// emulator's API, or a deployed stack's). Requests are then not counted or priced.
        #[arg(long, conflicts_with = "data_dir")]
        api: Option<String>,
        /// With `--api` on `tokenops emulator`: its front URL, to print per level where a run's
        /// time goes (each AWS action and function invoke: requests and ms per run).
        #[arg(long, requires = "api")]
        emulator_front: Option<String>,
        /// One JSON object per level on stdout instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// x402 payments (off unless a facilitator URL is given). Each flag falls back to the
/// environment variable named in its help; README "Paying with x402" says what to set.
#[derive(Args, Default)]
struct X402Args {
    /// The x402 facilitator (`POST /verify`, `POST /settle`) [env: X402_FACILITATOR_URL]
    #[arg(long)]
    x402_facilitator_url: Option<String>,
    /// CAIP-2 network, eip155:<chain id> [env: X402_NETWORK]
    #[arg(long)]
    x402_network: Option<String>,
    /// The EIP-3009 token contract [env: X402_ASSET]
    #[arg(long)]
    x402_asset: Option<String>,
    /// The token's EIP-712 domain name [env: X402_ASSET_NAME]
    #[arg(long)]
    x402_asset_name: Option<String>,
    /// The token's EIP-712 domain version [env: X402_ASSET_VERSION]
    #[arg(long)]
    x402_asset_version: Option<String>,
    /// The address payments go to [env: X402_PAY_TO]
    #[arg(long)]
    x402_pay_to: Option<String>,
    /// Token atomic units per credit [env: X402_ATOMIC_PER_CREDIT]
    #[arg(long)]
    x402_atomic_per_credit: Option<String>,
    /// The chain's JSON-RPC URL, read-only, for the reconciler [env: X402_RPC_URL]
    #[arg(long)]
    x402_rpc_url: Option<String>,
}

impl X402Args {
    fn config(
        &self,
    ) -> Result<Option<tokenops::x402::X402Config>, tokenops::x402::X402ConfigError> {
        let flag = |name: &str| -> Option<String> {
            match name {
                "X402_FACILITATOR_URL" => self.x402_facilitator_url.clone(),
                "X402_NETWORK" => self.x402_network.clone(),
                "X402_ASSET" => self.x402_asset.clone(),
                "X402_ASSET_NAME" => self.x402_asset_name.clone(),
                "X402_ASSET_VERSION" => self.x402_asset_version.clone(),
                "X402_PAY_TO" => self.x402_pay_to.clone(),
                "X402_ATOMIC_PER_CREDIT" => self.x402_atomic_per_credit.clone(),
                "X402_RPC_URL" => self.x402_rpc_url.clone(),
                _ => None,
            }
        };
        tokenops::x402::X402Config::from_lookup(|n| flag(n).or_else(|| std::env::var(n).ok()))
    }
}

fn parse_set(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{raw}' is not NAME=VALUE")),
    }
}

#[derive(Subcommand)]
enum VerifyCmd {
    /// An attestation (from GET /attestations/{id}) against keys (from GET /keys).
    Attestation {
        file: String,
        #[arg(long)]
        keys: String,
    },
    /// A ledger export (from GET /ledger).
    Ledger { file: String },
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOKENOPS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn temp_dir(kind: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "tokenops-{kind}-{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Serve {
            port,
            data_dir,
            crash_after_state,
            relay_after_secs,
            fsync_each_commit,
            x402,
        } => {
            init_logs("info,dynoxide=error");
            let mut opts = Options::new(data_dir, port);
            opts.fsync_each_commit = fsync_each_commit;
            opts.x402 = match x402.config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tokenops serve: {e}");
                    return ExitCode::from(2);
                }
            };
            opts.faults = Faults {
                crash_after_state,
                ..Default::default()
            };
            let after_ms = (relay_after_secs * 1000) as i64;
            opts.relay = tokenops_local::runtime::RelayConfig {
                resend_after_ms: after_ms,
                payment_after_ms: after_ms,
                failing_after_ms: after_ms,
                ..Default::default()
            };
            opts.relay_interval = std::time::Duration::from_secs(relay_after_secs.clamp(1, 5));
            if let Some(c) = &opts.x402 {
                eprintln!(
                    "tokenops: x402 payments on {} ({} atomic units of {} per credit, to {}; facilitator {})",
                    c.network, c.atomic_per_credit, c.asset, c.pay_to, c.facilitator_url
                );
            }
            let rt = match Runtime::start(opts).await {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tokenops serve: {e}");
                    return ExitCode::FAILURE;
                }
            };
            eprintln!("tokenops listening on {} (Ctrl-C to stop)", rt.base_url);
            let _ = tokio::signal::ctrl_c().await;
            rt.shutdown().await;
            ExitCode::SUCCESS
        }
        Cmd::ReferenceRun {
            data_dir,
            x402_peers,
        } => {
            init_logs("warn,dynoxide=error");
            let dir = data_dir.unwrap_or_else(|| temp_dir("reference"));
            eprintln!("tokenops reference-run: data dir {}", dir.display());
            let mut opts = Options::new(&dir, 0);
            let peers = match x402_peers.as_deref().map(paid_run::peers).transpose() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("reference-run: x402 peers: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(p) = &peers {
                match paid_run::config(p, 10_000) {
                    Ok(c) => opts.x402 = Some(c),
                    Err(e) => {
                        eprintln!("reference-run: x402 peers: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            let rt = match Runtime::start(opts).await {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("reference-run: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let outcome = match &peers {
                Some(p) => paid_run::play(&rt.base_url, p).await,
                None => reference::play(&rt.base_url).await,
            };
            rt.shutdown().await;
            match outcome {
                Ok(payload) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&payload).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("reference-run FAILED: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Redrive {
            run_id,
            data_dir,
            api,
        } => match tokenops_local::runtime::operator_redrive(&data_dir, &api, &run_id).await {
            Ok(body) => {
                println!("{body}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("redrive: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Mcp { api, key } => {
            // stdout carries the protocol: logs go to stderr, warnings only by default.
            init_logs("warn");
            match tokenops_local::mcp::serve_stdio(&api, key).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mcp: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Verify { what } => {
            let result = match what {
                VerifyCmd::Attestation { file, keys } => verify::attestation(&file, &keys).map(|st| serde_json::json!({"valid": true, "subjects": st.subject, "predicateType": st.predicate_type})),
                VerifyCmd::Ledger { file } => verify::ledger_export(&file).and_then(|r| {
                    let v = serde_json::to_value(&r).unwrap_or_default();
                    if r.valid {
                        Ok(v)
                    } else {
                        Err(verify::VerifyError::Invalid(format!("ledger chain broken: {v}")))
                    }
                }),
            };
            match result {
                Ok(v) => {
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("verify: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Emulator {
            upstream,
            listen,
            api_listen,
            template,
            stack,
            bin_dir,
            max_instances,
            visibility_timeout,
            info_file,
            schedule_interval,
            set,
        } => {
            init_logs("info");
            let opts = tokenops_local::emulator::EmulatorOptions {
                template,
                stack,
                upstream,
                listen,
                api_listen,
                bin_dir,
                max_instances,
                visibility_timeout,
                env: set.into_iter().collect(),
                schedule_interval: match schedule_interval {
                    Some(s) if !(s.is_finite() && s > 0.0) => {
                        eprintln!("tokenops emulator: --schedule-interval must be positive");
                        return ExitCode::FAILURE;
                    }
                    s => s.map(std::time::Duration::from_secs_f64),
                },
            };
            let emu = match tokenops_local::emulator::Emulator::start(opts).await {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("tokenops emulator: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let info = serde_json::to_string_pretty(&emu.info).unwrap_or_default();
            if let Some(f) = info_file {
                if let Err(e) = std::fs::write(&f, &info) {
                    eprintln!("tokenops emulator: {}: {e}", f.display());
                    return ExitCode::FAILURE;
                }
            }
            println!("{info}");
            eprintln!(
                "tokenops emulator: API {} · AWS endpoint {} (Ctrl-C to stop)",
                emu.api_url, emu.front_url
            );
            let _ = tokio::signal::ctrl_c().await;
            emu.shutdown();
            ExitCode::SUCCESS
        }
        Cmd::Bench {
            runs,
            concurrency,
            data_dir,
            api,
            emulator_front,
            json,
        } => {
            init_logs("error,dynoxide=off");
            let rt = match &api {
                Some(_) => None,
                None => {
                    let dir = data_dir.unwrap_or_else(|| temp_dir("bench"));
                    match Runtime::start(Options::new(&dir, 0)).await {
                        Ok(rt) => Some(rt),
                        Err(e) => {
                            eprintln!("bench: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
            };
            let base =
                api.unwrap_or_else(|| rt.as_ref().map(|r| r.base_url.clone()).unwrap_or_default());
            let mut reports = Vec::new();
            let mut failed = None;
            for c in concurrency {
                eprintln!("bench: {runs} runs at concurrency {c}");
                if let Some(front) = &emulator_front {
                    if let Err(e) = bench::emulator_stats(front, true).await {
                        failed = Some(e);
                        break;
                    }
                }
                match bench::run(&base, runs, c, rt.as_ref()).await {
                    Ok(r) => {
                        if json {
                            println!("{}", r.to_json());
                        }
                        if let Some(front) = &emulator_front {
                            match bench::emulator_stats(front, false).await {
                                Ok(stats) => eprint!(
                                    "concurrency {c}:\n{}",
                                    bench::emulator_table(&stats, runs)
                                ),
                                Err(e) => eprintln!("emulator stats: {e}"),
                            }
                        }
                        reports.push(r);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(rt) = rt {
                rt.shutdown().await;
            }
            if !json && !reports.is_empty() {
                print!("{}", bench::table(&reports));
            }
            match failed {
                None => ExitCode::SUCCESS,
                Some(e) => {
                    eprintln!("bench failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
