//! The embedded default: one process, the same handlers, an embedded DynamoDB engine (dynoxide,
//! SQLite in the data dir, served on a loopback port to the one `aws-sdk-dynamodb` adapter), the
//! table-backed run queue, the ASL orchestrator, and the HTTP API on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use tokenops::config::{Config, Ctx, RetryPolicy};
use tokenops::ports::HttpSender;
use tokenops::proof::{dsse::AttestationKey, webhook};
use tokenops::provider::{TestProvider, TEST_PROVIDER};
use tokenops::queue::StoreQueue;
use tokenops::store::Store;
use tokenops::x402::pay::HttpX402;
use tokenops_aws::{local_client, DynamoStore};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::asl::Engine;
use crate::orchestrator::{Faults, LocalOrchestrator};
use crate::store_gate::StoreGate;

pub const TABLE: &str = "tokenops";
pub use queue::relay::RelayConfig;

pub const QUEUE: &str = "runs";
pub const OPERATOR_KEY_FILE: &str = "operator.key";

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("no operator key in {0} (start `tokenops serve --data-dir` on it first)")]
    NoKey(PathBuf),
    #[error("the API at {0} is not reachable: {1}")]
    Unreachable(String, String),
    #[error("HTTP {0}: {1}")]
    Refused(u16, String),
}

/// `tokenops redrive RUN`: `POST /runs/{run}/redrive` with the data dir's operator key.
pub async fn operator_redrive(
    data_dir: &Path,
    api: &str,
    run_id: &str,
) -> Result<String, OperatorError> {
    let key = std::fs::read_to_string(data_dir.join(OPERATOR_KEY_FILE))
        .map_err(|_| OperatorError::NoKey(data_dir.to_path_buf()))?;
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/runs/{run_id}/redrive",
            api.trim_end_matches('/')
        ))
        .bearer_auth(key.trim())
        .header(
            "idempotency-key",
            format!("operator-redrive-{}", ulid::Ulid::new()),
        )
        .send()
        .await
        .map_err(|e| OperatorError::Unreachable(api.into(), e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(OperatorError::Refused(status, body))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("embedded DynamoDB engine: {0}")]
    Engine(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] tokenops::error::StoreError),
    /// The callback sender or the x402 clients could not be built (no TLS backend).
    #[error("HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

#[derive(Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub port: u16,
    pub faults: Faults,
    /// Callback retry policy (tests shorten it).
    pub callback_retry: RetryPolicy,
    pub queue_visibility_secs: i64,
    pub queue_max_receives: i64,
    /// The relay's bounds (re-send, provider retries, failure handling) and how often it runs.
    pub relay: queue::relay::RelayConfig,
    pub relay_interval: Duration,
    /// The transient-fault rule for checkpoints and record writes (tests may scale it).
    pub transient: tokenops::backoff::Backoff,
    /// Outage tests: put a [`StoreGate`] between the runtime and its embedded engine.
    pub store_gate: Option<StoreGate>,
    /// x402 payments (`tokenops serve --x402-*` / `X402_*`); `None`: not accepted.
    pub x402: Option<tokenops::x402::X402Config>,
    /// SQLite `synchronous=FULL`: an fsync per commit, so a commit also survives an OS crash or
    /// a power loss. Off (the default), commits survive a killed process, not a lost machine.
    pub fsync_each_commit: bool,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>, port: u16) -> Self {
        Options {
            data_dir: data_dir.into(),
            port,
            faults: Faults::default(),
            callback_retry: RetryPolicy {
                attempts: 4,
                base_delay_ms: 200,
            },
            queue_visibility_secs: 10,
            queue_max_receives: 5,
            relay: queue::relay::RelayConfig::default(),
            relay_interval: Duration::from_secs(5),
            transient: tokenops::backoff::Backoff::TRANSIENT,
            store_gate: None,
            x402: None,
            fsync_each_commit: false,
        }
    }
}

pub type LocalCtx = Ctx<DynamoStore>;
pub type LocalQueue = StoreQueue<DynamoStore>;

/// A running local runtime; dropping `stop` (or calling [`Runtime::shutdown`]) stops its tasks.
pub struct Runtime {
    pub ctx: LocalCtx,
    pub data_dir: PathBuf,
    /// Switches for the stage faults of [`Faults`] (tests).
    pub orchestrator_faults: Faults,
    pub queue: LocalQueue,
    pub orchestrator: LocalOrchestrator,
    pub addr: SocketAddr,
    pub base_url: String,
    pub dynamodb_endpoint: String,
    stop: watch::Sender<bool>,
}

impl Runtime {
    pub async fn start(opts: Options) -> Result<Runtime, RuntimeError> {
        let dir = &opts.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| RuntimeError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let (stop, stop_rx) = watch::channel(false);

        // Embedded DynamoDB: SQLite file in the data dir, DynamoDB API on a loopback port.
        let db_path = dir.join("tokenops.db");
        let db = dynoxide::Database::new(&db_path.to_string_lossy())
            .map_err(|e| RuntimeError::Engine(e.to_string()))?;
        // dynoxide opens its SQLite file in WAL mode with SQLite's default synchronous=FULL: an
        // fsync per commit, and commits are serialized, so on this VM's disk the fsyncs cost a
        // third of the loop's throughput (`make bench` at 16: 34 runs/s, 51 on tmpfs).
        // synchronous=NORMAL keeps a WAL commit across a killed process (the resume tests kill
        // `tokenops serve` mid-run) and the file consistent; only an OS crash or power loss may
        // roll back the last commits. `disable_bulk_loading` is dynoxide's setter for its normal
        // PRAGMAs (synchronous=NORMAL, the rest at SQLite's defaults).
        if !opts.fsync_each_commit {
            db.disable_bulk_loading()
                .map_err(|e| RuntimeError::Engine(e.to_string()))?;
        }
        let ddb_listener =
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|source| RuntimeError::Listen {
                    addr: "127.0.0.1:0".into(),
                    source,
                })?;
        let ddb_addr = ddb_listener
            .local_addr()
            .map_err(|source| RuntimeError::Listen {
                addr: "dynamodb".into(),
                source,
            })?;
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let _ = dynoxide::server::serve_with_shutdown(ddb_listener, db, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        });
        let dynamodb_endpoint = format!("http://{ddb_addr}");
        // Outage tests reach the engine through the gate; everything else talks to it directly.
        let store_endpoint = match &opts.store_gate {
            Some(gate) => {
                let l = TcpListener::bind("127.0.0.1:0").await.map_err(|source| {
                    RuntimeError::Listen {
                        addr: "store gate".into(),
                        source,
                    }
                })?;
                let a = l.local_addr().map_err(|source| RuntimeError::Listen {
                    addr: "store gate".into(),
                    source,
                })?;
                gate.spawn(l, ddb_addr, stop_rx.clone());
                format!("http://{a}")
            }
            None => dynamodb_endpoint.clone(),
        };
        let store = DynamoStore::new(local_client(&store_endpoint), TABLE);
        store.ensure_table().await?;

        let api_addr = format!("127.0.0.1:{}", opts.port);
        let api_listener =
            TcpListener::bind(&api_addr)
                .await
                .map_err(|source| RuntimeError::Listen {
                    addr: api_addr.clone(),
                    source,
                })?;
        let addr = api_listener
            .local_addr()
            .map_err(|source| RuntimeError::Listen {
                addr: api_addr,
                source,
            })?;
        let base_url = format!("http://{addr}");

        let provider_secret = secret_file(&dir.join("test_provider.secret"), || {
            let mut raw = [0u8; 24];
            rand::thread_rng().fill_bytes(&mut raw);
            webhook::new_secret(raw).into_bytes()
        })?;
        let seed = secret_file(&dir.join("attestation.key"), || {
            let mut raw = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut raw);
            raw.to_vec()
        })?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| RuntimeError::DataDir {
            path: dir.join("attestation.key"),
            source: std::io::Error::other("must hold 32 bytes"),
        })?;
        let provider_secret = String::from_utf8_lossy(&provider_secret).trim().to_string();
        // The local operator's access key (`tokenops redrive`): stored, like every key, as a hash.
        let operator_key = secret_file(&dir.join(OPERATOR_KEY_FILE), || {
            tokenops::ids::random_token("tok_op").into_bytes()
        })?;
        let operator_key = String::from_utf8_lossy(&operator_key).trim().to_string();
        store
            .transact(vec![tokenops::store::Write::put(
                tokenops::store::Item::new(
                    tokenops::api::access_key_item_key(&operator_key),
                    "access_key",
                    Some(queue::redrive::OPERATOR),
                    serde_json::json!({"role": "operator"}),
                ),
            )])
            .await?;
        let config = Config {
            public_base_url: base_url.clone(),
            allow_loopback_callbacks: true,
            quote_ttl_secs: 900,
            provider_secrets: BTreeMap::from([(
                TEST_PROVIDER.to_string(),
                provider_secret.clone(),
            )]),
            signer: Some(std::sync::Arc::new(AttestationKey::from_seed(seed))),
            callback_retry: opts.callback_retry.clone(),
            idempotency_ttl_secs: 86_400,
            transient: opts.transient,
            x402: opts.x402.clone(),
        };
        let x402 = opts
            .x402
            .as_ref()
            .map(HttpX402::from_config)
            .transpose()
            .map_err(RuntimeError::HttpClient)?;
        let ctx = Ctx::new(store.clone(), config);
        let sender = HttpSender::new(Duration::from_secs(10)).map_err(RuntimeError::HttpClient)?;
        // The queue and the relay stand in for SQS and a schedule: their store traffic is
        // counted apart from the loop's (the bench prices SQS requests, not their emulation).
        let queue = StoreQueue::new(
            store.counted_apart(),
            QUEUE,
            opts.queue_visibility_secs,
            opts.queue_max_receives,
        );
        let orchestrator = LocalOrchestrator::start_workers(
            ctx.clone(),
            sender.clone(),
            Engine::default(),
            opts.faults.clone(),
        )
        .await?;
        let provider = TestProvider::new(&base_url, &provider_secret, Duration::from_millis(20));

        crate::server::spawn(
            api_listener,
            crate::server::App {
                ctx: ctx.clone(),
                queue: queue.clone(),
                sender: sender.clone(),
                provider: provider.clone(),
                x402: x402.clone(),
            },
            stop_rx.clone(),
        );
        spawn_queue_consumer(
            ctx.clone(),
            queue.clone(),
            orchestrator.clone(),
            sender.clone(),
            stop_rx.clone(),
        );
        spawn_relay(
            Relay {
                ctx: Ctx {
                    store: store.counted_apart(),
                    config: ctx.config.clone(),
                },
                queue: queue.clone(),
                sender,
                provider,
                x402,
                orchestrator: orchestrator.clone(),
                cfg: opts.relay.clone(),
            },
            opts.relay_interval,
            stop_rx,
        );
        tracing::info!(%base_url, data_dir = %dir.display(), "tokenops local runtime ready");
        Ok(Runtime {
            ctx,
            data_dir: dir.clone(),
            orchestrator_faults: opts.faults.clone(),
            queue,
            orchestrator,
            addr,
            base_url,
            dynamodb_endpoint,
            stop,
        })
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the queue (long-poll style) and hands batches to the queue stage.
fn spawn_queue_consumer(
    ctx: LocalCtx,
    queue: LocalQueue,
    orch: LocalOrchestrator,
    sender: HttpSender,
    mut stop: watch::Receiver<bool>,
) {
    use tokenops::ports::RunQueue;
    tokio::spawn(async move {
        loop {
            if *stop.borrow() {
                return;
            }
            match queue.receive(10).await {
                Ok(batch) if !batch.is_empty() => {
                    queue::process_batch(&ctx, &queue, &orch, &sender, batch).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "queue receive failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
                _ = stop.changed() => {}
            }
        }
    });
}

struct Relay {
    ctx: LocalCtx,
    queue: LocalQueue,
    sender: HttpSender,
    provider: TestProvider,
    x402: Option<HttpX402>,
    orchestrator: LocalOrchestrator,
    cfg: queue::relay::RelayConfig,
}

/// The relay (`queue::relay`) plus this plane's own duty: executions paused by an outage resume
/// once the store answers again, without a restart.
fn spawn_relay(r: Relay, every: Duration, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            match queue::relay::tick(&r.ctx, &r.queue, &r.sender, &r.provider, &r.cfg).await {
                Ok(report) if report != queue::relay::RelayReport::default() => {
                    tracing::info!(?report, "relay tick")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "relay tick failed; next tick"),
            }
            if let Some(ports) = &r.x402 {
                match tokenops::x402::pay::reconcile(&r.ctx, ports, r.cfg.x402_after_ms).await {
                    Ok(report) if report != Default::default() => {
                        tracing::info!(?report, "x402 reconciler tick")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "x402 reconciler failed; next tick"),
                }
            }
            match r.orchestrator.resume_stalled().await {
                Ok(n) if n > 0 => tracing::info!(resumed = n, "relay resumed paused executions"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "relay could not list executions; next tick"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
}

/// Reads a secret file, creating it (mode 0600) on first start so restarts keep the same keys.
fn secret_file(path: &Path, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, RuntimeError> {
    let err = |source| RuntimeError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return std::fs::read(path).map_err(err);
    }
    let bytes = make();
    std::fs::write(path, &bytes).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(bytes)
}
