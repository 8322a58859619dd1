//! Runs the real built function binaries under a local Lambda Runtime API, as AWS's runtime
//! interface emulator does: each instance is a process with `AWS_LAMBDA_RUNTIME_API` pointing at
//! its own loopback listener, and pulls invocations from its function's queue
//! (`GET …/invocation/next`), answering with `…/response` or `…/error`. Instances start on
//! demand (up to a limit per function), are reused warm, and an instance that exits or overruns
//! the function's timeout fails its invocation and is replaced, as in Lambda.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, Mutex};

/// What an invocation returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok(Vec<u8>),
    /// A function error: `errorType` and the error document (`{"errorType","errorMessage"}`).
    FunctionError {
        error_type: String,
        body: Vec<u8>,
    },
}

impl Outcome {
    fn error(error_type: &str, message: &str) -> Outcome {
        Outcome::FunctionError {
            error_type: error_type.into(),
            body: serde_json::to_vec(
                &serde_json::json!({"errorType": error_type, "errorMessage": message}),
            )
            .unwrap_or_default(),
        }
    }
}

struct Invocation {
    request_id: String,
    payload: Vec<u8>,
    reply: oneshot::Sender<Outcome>,
}

/// One function: its binary, environment and instances.
pub struct Function {
    pub name: String,
    pub arn: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    timeout: Duration,
    max_instances: usize,
    tx: mpsc::Sender<Invocation>,
    rx: Arc<Mutex<mpsc::Receiver<Invocation>>>,
    instances: AtomicUsize,
    /// Instances blocked in `/next` (idle, ready for work).
    idle: Arc<AtomicUsize>,
    spawn_lock: Mutex<()>,
}

/// The invocation an instance is handling: (request id, where its outcome goes).
type InFlight = Arc<std::sync::Mutex<Option<(String, oneshot::Sender<Outcome>)>>>;

#[derive(Clone)]
struct InstanceState {
    function: Arc<FunctionShared>,
    current: InFlight,
}

struct FunctionShared {
    name: String,
    arn: String,
    timeout: Duration,
    rx: Arc<Mutex<mpsc::Receiver<Invocation>>>,
    idle: Arc<AtomicUsize>,
}

impl Function {
    pub fn new(
        name: &str,
        arn: &str,
        binary: PathBuf,
        env: Vec<(String, String)>,
        timeout: Duration,
        max_instances: usize,
    ) -> Arc<Function> {
        let (tx, rx) = mpsc::channel(1024);
        Arc::new(Function {
            name: name.into(),
            arn: arn.into(),
            binary,
            env,
            timeout,
            max_instances: max_instances.max(1),
            tx,
            rx: Arc::new(Mutex::new(rx)),
            instances: AtomicUsize::new(0),
            idle: Arc::new(AtomicUsize::new(0)),
            spawn_lock: Mutex::new(()),
        })
    }

    /// Invokes the function synchronously (RequestResponse).
    pub async fn invoke(self: &Arc<Self>, payload: Vec<u8>) -> Outcome {
        let (reply, rx) = oneshot::channel();
        let inv = Invocation {
            request_id: ulid::Ulid::new().to_string().to_ascii_lowercase(),
            payload,
            reply,
        };
        if let Err(e) = self.ensure_capacity().await {
            return Outcome::error("Runtime.StartError", &e);
        }
        if self.tx.send(inv).await.is_err() {
            return Outcome::error("Runtime.Unavailable", "function queue closed");
        }
        // The instance enforces the timeout; this bound only guards against a lost reply.
        match tokio::time::timeout(self.timeout + Duration::from_secs(30), rx).await {
            Ok(Ok(o)) => o,
            _ => Outcome::error("Sandbox.Timedout", "no reply from the function"),
        }
    }

    /// Starts an instance when none is idle and the limit allows.
    async fn ensure_capacity(self: &Arc<Self>) -> Result<(), String> {
        let _g = self.spawn_lock.lock().await;
        if self.idle.load(Ordering::SeqCst) > 0
            || self.instances.load(Ordering::SeqCst) >= self.max_instances
        {
            return Ok(());
        }
        self.spawn_instance().await
    }

    async fn spawn_instance(self: &Arc<Self>) -> Result<(), String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("runtime API listener: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let state = InstanceState {
            function: Arc::new(FunctionShared {
                name: self.name.clone(),
                arn: self.arn.clone(),
                timeout: self.timeout,
                rx: self.rx.clone(),
                idle: self.idle.clone(),
            }),
            current: Arc::new(std::sync::Mutex::new(None)),
        };
        let app = axum::Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(state.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        let mut cmd = Command::new(&self.binary);
        cmd.env_clear()
            .envs(std::env::vars().filter(|(k, _)| k == "PATH" || k == "RUST_BACKTRACE"))
            .envs(self.env.iter().cloned())
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", self.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "emulator")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.instances.fetch_add(1, Ordering::SeqCst);
        tracing::info!(function = %self.name, runtime_api = %addr, "instance started");
        let this = self.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            this.instances.fetch_sub(1, Ordering::SeqCst);
            let _ = stop_tx.send(());
            let in_flight = state.current.lock().ok().and_then(|mut c| c.take());
            if let Some((id, reply)) = in_flight {
                let _ = reply.send(Outcome::error(
                    "Runtime.ExitError",
                    &format!("instance exited ({status:?}) while handling {id}"),
                ));
            }
            tracing::warn!(function = %this.name, ?status, "instance exited");
        });
        Ok(())
    }
}

async fn next(State(st): State<InstanceState>) -> Response {
    let f = &st.function;
    f.idle.fetch_add(1, Ordering::SeqCst);
    let inv = { f.rx.lock().await.recv().await };
    f.idle.fetch_sub(1, Ordering::SeqCst);
    let Some(inv) = inv else {
        return Response::builder()
            .status(StatusCode::GONE)
            .body(Body::empty())
            .unwrap_or_default();
    };
    let deadline = std::time::SystemTime::now() + f.timeout;
    let deadline_ms = deadline
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let id = inv.request_id.clone();
    if let Ok(mut cur) = st.current.lock() {
        *cur = Some((id.clone(), inv.reply));
    }
    // The function's timeout: an overrun fails the invocation; a late reply is then ignored.
    let timer_state = st.clone();
    let timer_id = id.clone();
    let timeout = f.timeout;
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let overrun = timer_state
            .current
            .lock()
            .ok()
            .and_then(|mut c| match c.as_ref() {
                Some((cur, _)) if *cur == timer_id => c.take(),
                _ => None,
            });
        if let Some((_, reply)) = overrun {
            let _ = reply.send(Outcome::error(
                "Sandbox.Timedout",
                &format!("Task timed out after {:.2} seconds", timeout.as_secs_f64()),
            ));
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("lambda-runtime-aws-request-id", &id)
        .header("lambda-runtime-deadline-ms", deadline_ms.to_string())
        .header("lambda-runtime-invoked-function-arn", &f.arn)
        .header(
            "lambda-runtime-trace-id",
            format!("Root=1-{}-{}", &id[..8.min(id.len())], id),
        )
        .body(Body::from(inv.payload))
        .unwrap_or_default()
}

fn take_current(st: &InstanceState, id: &str) -> Option<oneshot::Sender<Outcome>> {
    let mut cur = st.current.lock().ok()?;
    match cur.as_ref() {
        Some((c, _)) if c == id => cur.take().map(|(_, r)| r),
        _ => None,
    }
}

fn accepted() -> Response {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header("content-type", "application/json")
        .body(Body::from(r#"{"status":"OK"}"#))
        .unwrap_or_default()
}

async fn respond(
    State(st): State<InstanceState>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Response {
    let bytes = to_bytes(body, 6 * 1024 * 1024).await.unwrap_or_default();
    if let Some(reply) = take_current(&st, &id) {
        let _ = reply.send(Outcome::Ok(bytes.to_vec()));
    }
    accepted()
}

async fn fail(
    State(st): State<InstanceState>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = to_bytes(body, 1024 * 1024).await.unwrap_or_default();
    let error_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["errorType"].as_str().map(str::to_string))
        .or_else(|| {
            headers
                .get("lambda-runtime-function-error-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "Unhandled".into());
    if let Some(reply) = take_current(&st, &id) {
        let _ = reply.send(Outcome::FunctionError {
            error_type,
            body: bytes.to_vec(),
        });
    }
    accepted()
}

async fn init_error(State(st): State<InstanceState>, body: Body) -> Response {
    let bytes = to_bytes(body, 1024 * 1024).await.unwrap_or_default();
    tracing::error!(function = %st.function.name, error = %String::from_utf8_lossy(&bytes), "function init failed");
    accepted()
}

/// Where a function's binary is: `<dir>/<binary>` (a cargo target dir) or
/// `<dir>/<binary>/bootstrap` (cargo lambda's `target/lambda` layout).
pub fn find_binary(dir: &Path, binary: &str) -> Option<PathBuf> {
    [dir.join(binary), dir.join(binary).join("bootstrap")]
        .into_iter()
        .find(|p| p.is_file())
}

/// All functions by name.
#[derive(Clone, Default)]
pub struct Functions {
    by_name: Arc<BTreeMap<String, Arc<Function>>>,
}

impl Functions {
    pub fn new(fns: Vec<Arc<Function>>) -> Self {
        Functions {
            by_name: Arc::new(fns.into_iter().map(|f| (f.name.clone(), f)).collect()),
        }
    }

    /// By name, ARN, or partial ARN with a qualifier (`name:$LATEST`), as Invoke accepts.
    pub fn get(&self, id: &str) -> Option<&Arc<Function>> {
        let name = id.rsplit_once(":function:").map(|(_, n)| n).unwrap_or(id);
        let name = name.split(':').next().unwrap_or(name);
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }
}
