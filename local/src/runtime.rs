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
use tokenops::store::{local_client, DynamoStore};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::asl::Engine;
use crate::orchestrator::{Faults, LocalOrchestrator};

pub const TABLE: &str = "tokenops";
pub const QUEUE: &str = "runs";

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
    #[error("callback HTTP client: {0}")]
    CallbackClient(#[source] reqwest::Error),
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
        }
    }
}

pub type LocalCtx = Ctx<DynamoStore>;
pub type LocalQueue = StoreQueue<DynamoStore>;

/// A running local runtime; dropping `stop` (or calling [`Runtime::shutdown`]) stops its tasks.
pub struct Runtime {
    pub ctx: LocalCtx,
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
        let store = DynamoStore::new(local_client(&dynamodb_endpoint), TABLE);
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
        let config = Config {
            public_base_url: base_url.clone(),
            allow_loopback_callbacks: true,
            quote_ttl_secs: 900,
            provider_secrets: BTreeMap::from([(
                TEST_PROVIDER.to_string(),
                provider_secret.clone(),
            )]),
            attestation_key: AttestationKey::from_seed(seed),
            callback_retry: opts.callback_retry.clone(),
            idempotency_ttl_secs: 86_400,
        };
        let ctx = Ctx::new(store.clone(), config);
        let sender =
            HttpSender::new(Duration::from_secs(10)).map_err(RuntimeError::CallbackClient)?;
        let queue = StoreQueue::new(
            store.clone(),
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
                sender,
                provider,
            },
            stop_rx.clone(),
        );
        spawn_queue_consumer(ctx.clone(), queue.clone(), orchestrator.clone(), stop_rx);
        tracing::info!(%base_url, data_dir = %dir.display(), "tokenops local runtime ready");
        Ok(Runtime {
            ctx,
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
                    queue::process_batch(&ctx, &queue, &orch, batch).await;
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
