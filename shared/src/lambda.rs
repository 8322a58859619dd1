//! The Lambda edge: configuration from the environment (once per cold start), API Gateway HTTP API
//! (payload v2) events to and from [`ApiRequest`]/[`ApiResponse`], and task errors as Lambda
//! diagnostics with stable `errorType`s.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};

use crate::config::{Config, Ctx, RetryPolicy};
use crate::error::TaskError;
use crate::http::{parse_query, ApiRequest, ApiResponse};
use crate::proof::dsse::AttestationKey;
use crate::proof::kms::KmsSigner;
use crate::proof::signer::{SignError, Signer};
use crate::store::DynamoStore;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {0} is invalid: {1}")]
    Invalid(&'static str, String),
    #[error("attestation signer: {0}")]
    Signer(#[from] SignError),
}

/// The attestation function's KMS key (key id, key ARN or alias): the signer in AWS.
pub const SIGNER_KMS_KEY: &str = "ATTESTATION_KMS_KEY_ID";
/// A local Ed25519 seed (base64 of 32 bytes) instead of KMS. Never set by the SAM template: it
/// is for planes without an Ed25519-capable KMS — `tokenops emulator` sets it, because moto's
/// KMS has no `ECC_NIST_EDWARDS25519` keys.
pub const SIGNER_LOCAL_SEED: &str = "ATTESTATION_LOCAL_KEY_SEED";

fn env(name: &'static str) -> Result<String, ConfigError> {
    std::env::var(name).map_err(|_| ConfigError::Missing(name))
}

/// The AWS SDK configuration, loaded once per cold start and shared by every client. It honours
/// `AWS_ENDPOINT_URL` (emulators), the region and the credentials of the Lambda environment.
pub async fn sdk() -> &'static aws_config::SdkConfig {
    static SDK: tokio::sync::OnceCell<aws_config::SdkConfig> = tokio::sync::OnceCell::const_new();
    SDK.get_or_init(|| aws_config::load_defaults(aws_config::BehaviorVersion::latest()))
        .await
}

/// The SQS run queue from `QUEUE_URL` (and `DLQ_URL` for the monitor's dead-letter depth).
pub async fn sqs_queue_from_env() -> Result<crate::queue::SqsQueue, ConfigError> {
    let dlq = std::env::var("DLQ_URL").ok().filter(|u| !u.is_empty());
    Ok(crate::queue::SqsQueue::new(
        aws_sdk_sqs::Client::new(sdk().await),
        &env("QUEUE_URL")?,
        dlq.as_deref(),
    ))
}

/// A 32-byte seed, base64.
pub fn key_from_b64(name: &'static str, raw: &str) -> Result<AttestationKey, ConfigError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .map_err(|e| ConfigError::Invalid(name, e.to_string()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ConfigError::Invalid(name, "must decode to 32 bytes".into()))?;
    Ok(AttestationKey::from_seed(seed))
}

/// The attestation signer from exactly one of [`SIGNER_KMS_KEY`] (AWS: `GetPublicKey` now, `Sign`
/// per attestation) or [`SIGNER_LOCAL_SEED`] (a local key).
pub async fn signer_from_env() -> Result<Arc<dyn Signer>, ConfigError> {
    let set = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    match (set(SIGNER_KMS_KEY), set(SIGNER_LOCAL_SEED)) {
        (Some(key), None) => Ok(Arc::new(
            KmsSigner::connect(aws_sdk_kms::Client::new(sdk().await), key.trim()).await?,
        )),
        (None, Some(seed)) => Ok(Arc::new(key_from_b64(SIGNER_LOCAL_SEED, &seed)?)),
        (None, None) => Err(ConfigError::Missing(SIGNER_KMS_KEY)),
        (Some(_), Some(_)) => Err(ConfigError::Invalid(
            SIGNER_LOCAL_SEED,
            format!("set either {SIGNER_KMS_KEY} or {SIGNER_LOCAL_SEED}, not both"),
        )),
    }
}

/// [`ctx_from_env`] plus the attestation signer ([`signer_from_env`]): the function that signs.
pub async fn signing_ctx_from_env() -> Result<Ctx<DynamoStore>, ConfigError> {
    let signer = signer_from_env().await?;
    ctx_with(Some(signer)).await
}

/// Cold-start wiring shared by every function: DynamoDB client (honours `AWS_ENDPOINT_URL`) and
/// configuration from `TABLE_NAME`, `PUBLIC_BASE_URL`, `TEST_PROVIDER_SECRET`. No signer: only
/// the attestation function signs ([`signing_ctx_from_env`]).
pub async fn ctx_from_env() -> Result<Ctx<DynamoStore>, ConfigError> {
    ctx_with(None).await
}

async fn ctx_with(signer: Option<Arc<dyn Signer>>) -> Result<Ctx<DynamoStore>, ConfigError> {
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(sdk().await),
        &env("TABLE_NAME")?,
    );
    let mut provider_secrets = BTreeMap::new();
    if let Ok(s) = env("TEST_PROVIDER_SECRET") {
        provider_secrets.insert(crate::provider::TEST_PROVIDER.to_string(), s);
    }
    let config = Config {
        public_base_url: env("PUBLIC_BASE_URL")?,
        allow_loopback_callbacks: std::env::var("ALLOW_LOOPBACK_CALLBACKS")
            .is_ok_and(|v| v == "true"),
        quote_ttl_secs: 900,
        provider_secrets,
        signer,
        callback_retry: RetryPolicy {
            attempts: 4,
            base_delay_ms: 500,
        },
        idempotency_ttl_secs: 86_400,
        transient: crate::backoff::Backoff::TRANSIENT,
        x402: crate::x402::X402Config::from_lookup(|k| std::env::var(k).ok())
            .map_err(|e| ConfigError::Invalid(e.name, e.reason))?,
    };
    Ok(Ctx::new(store, config))
}

/// The x402 facilitator and chain clients, when `X402_FACILITATOR_URL` configures x402.
pub fn x402_ports<S>(ctx: &Ctx<S>) -> Result<Option<crate::x402::pay::HttpX402>, reqwest::Error> {
    ctx.config
        .x402
        .as_ref()
        .map(crate::x402::pay::HttpX402::from_config)
        .transpose()
}

/// Structured JSON logs (no secrets or evidence are ever passed to tracing fields).
pub fn init_logging() {
    let _ = tracing_subscriber_init();
}

fn tracing_subscriber_init() -> Result<(), ()> {
    // lambda_runtime's tracing feature installs a JSON-capable subscriber.
    lambda_runtime::tracing::init_default_subscriber();
    Ok(())
}

/// API Gateway HTTP API v2 event → request.
pub fn request_from_apigw_v2(ev: &Value) -> ApiRequest {
    let s = |p: &str| {
        ev.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let headers: BTreeMap<String, String> = ev
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.to_ascii_lowercase(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let raw_body = s("/body");
    let body = if ev
        .get("isBase64Encoded")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        base64::engine::general_purpose::STANDARD
            .decode(raw_body.as_bytes())
            .unwrap_or_default()
    } else {
        raw_body.into_bytes()
    };
    ApiRequest {
        method: s("/requestContext/http/method"),
        path: s("/rawPath"),
        query: parse_query(&s("/rawQueryString")),
        headers,
        body,
        source_ip: Some(s("/requestContext/http/sourceIp")).filter(|ip| !ip.is_empty()),
        ..Default::default()
    }
}

pub fn is_apigw_v2(ev: &Value) -> bool {
    ev.pointer("/requestContext/http/method").is_some()
}

/// Response → API Gateway HTTP API v2 result.
pub fn response_to_apigw_v2(r: &ApiResponse) -> Value {
    let headers: serde_json::Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({"statusCode": r.status, "headers": headers, "body": String::from_utf8_lossy(&r.body), "isBase64Encoded": false})
}

/// `lambda_http` request → request.
pub fn request_from_http(req: lambda_http::Request) -> ApiRequest {
    use lambda_http::RequestExt;
    let source_ip = match req.request_context_ref() {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(c)) => c.http.source_ip.clone(),
        _ => None,
    };
    let (parts, body) = req.into_parts();
    ApiRequest {
        source_ip,
        ..ApiRequest::from_http(&parts, body.to_vec())
    }
}

pub fn response_to_http(r: ApiResponse) -> lambda_http::Response<lambda_http::Body> {
    let mut b = lambda_http::Response::builder().status(r.status);
    for (k, v) in &r.headers {
        b = b.header(k, v);
    }
    b.body(lambda_http::Body::from(r.body))
        .unwrap_or_else(|_| lambda_http::Response::new(lambda_http::Body::Empty))
}

/// Task errors reach Step Functions as `errorType` (matched by the ASL) + message.
impl From<TaskError> for lambda_runtime::Diagnostic {
    fn from(e: TaskError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.error_type().to_string(),
            error_message: e.to_string(),
        }
    }
}

/// Step Functions orchestrator: executions are named by the run, so a duplicate start is
/// `ExecutionAlreadyExists`, reported as [`Started::AlreadyExists`].
#[derive(Clone)]
pub struct StepFunctions {
    client: aws_sdk_sfn::Client,
    state_machine_arn: String,
}

impl StepFunctions {
    pub async fn from_env() -> Result<Self, ConfigError> {
        Ok(StepFunctions {
            client: aws_sdk_sfn::Client::new(sdk().await),
            state_machine_arn: env("STATE_MACHINE_ARN")?,
        })
    }
}

impl crate::ports::Orchestrator for StepFunctions {
    async fn start(
        &self,
        name: &str,
        input: Value,
    ) -> Result<crate::ports::Started, crate::error::StoreError> {
        let res = self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(name)
            .input(input.to_string())
            .send()
            .await;
        match res {
            Ok(_) => Ok(crate::ports::Started::New),
            Err(e) => {
                let msg = format!("{}", aws_sdk_sfn::error::DisplayErrorContext(&e));
                if msg.contains("ExecutionAlreadyExists") {
                    Ok(crate::ports::Started::AlreadyExists)
                } else {
                    Err(crate::error::StoreError::Unavailable(msg))
                }
            }
        }
    }

    async fn redrive(
        &self,
        name: &str,
    ) -> Result<crate::ports::Redriven, crate::error::StoreError> {
        self.redrive_execution(name).await
    }
}

impl StepFunctions {
    /// Executions are named by the run: the ARN follows from the state machine's.
    fn execution_arn(&self, name: &str) -> String {
        format!(
            "{}:{name}",
            self.state_machine_arn
                .replacen(":stateMachine:", ":execution:", 1)
        )
    }

    /// `RedriveExecution`: not redrivable (running, succeeded, redriven already) is not an error.
    pub async fn redrive_execution(
        &self,
        name: &str,
    ) -> Result<crate::ports::Redriven, crate::error::StoreError> {
        use crate::ports::Redriven;
        let res = self
            .client
            .redrive_execution()
            .execution_arn(self.execution_arn(name))
            .send()
            .await;
        match res {
            Ok(_) => Ok(Redriven::Yes),
            Err(e) => {
                let msg = format!("{}", aws_sdk_sfn::error::DisplayErrorContext(&e));
                if msg.contains("ExecutionNotRedrivable") {
                    Ok(Redriven::NotFailed)
                } else if msg.contains("ExecutionDoesNotExist") {
                    Ok(Redriven::NotFound)
                } else {
                    Err(crate::error::StoreError::Unavailable(msg))
                }
            }
        }
    }
}

/// The test provider as the Lambda functions run it: its secret from the configuration, the
/// API's own URL, confirming before `request_payment` returns (a frozen sandbox would never run a
/// background task).
pub fn test_provider<S>(ctx: &Ctx<S>) -> crate::provider::TestProvider {
    let secret = ctx
        .config
        .provider_secrets
        .get(crate::provider::TEST_PROVIDER)
        .cloned()
        .unwrap_or_default();
    crate::provider::TestProvider::new(
        &ctx.config.public_base_url,
        &secret,
        std::time::Duration::ZERO,
    )
    .confirm_inline()
}

/// An EventBridge "Step Functions Execution Status Change" event for a FAILED, TIMED_OUT or
/// ABORTED execution → what the failure handler needs. The event carries the execution's error
/// and cause (`detail.error`, `detail.cause`); a timeout or abort has none, so its status names it.
pub fn failed_execution(ev: &Value) -> Option<crate::model::FailedExecution> {
    if ev.get("detail-type").and_then(Value::as_str)
        != Some("Step Functions Execution Status Change")
    {
        return None;
    }
    let d = ev.get("detail")?;
    let status = d.get("status").and_then(Value::as_str)?;
    if !matches!(status, "FAILED" | "TIMED_OUT" | "ABORTED") {
        return None;
    }
    let text = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
    Some(crate::model::FailedExecution {
        execution: text("name")?,
        error: text("error").unwrap_or_else(|| match status {
            "TIMED_OUT" => "States.Timeout".into(),
            "ABORTED" => "Aborted".into(),
            _ => "States.TaskFailed".into(),
        }),
        cause: text("cause").unwrap_or_else(|| format!("execution {status}")),
    })
}

/// An EventBridge schedule's event (the relay's tick).
pub fn is_scheduled(ev: &Value) -> bool {
    ev.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
}

/// SQS event records → deliveries (body must be a run message; a bad body is reported per record).
pub fn sqs_deliveries(ev: &Value) -> Vec<Result<crate::ports::Delivery, String>> {
    ev.get("Records")
        .and_then(Value::as_array)
        .map(|recs| {
            recs.iter()
                .map(|r| {
                    let id = r
                        .get("messageId")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let body = r.get("body").and_then(Value::as_str).unwrap_or("");
                    let count = r
                        .pointer("/attributes/ApproximateReceiveCount")
                        .and_then(Value::as_str)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1);
                    let sent = r
                        .pointer("/attributes/SentTimestamp")
                        .and_then(Value::as_str)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    serde_json::from_str(body)
                        .map(|body| crate::ports::Delivery {
                            message_id: id.clone(),
                            receipt: r
                                .get("receiptHandle")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .into(),
                            body,
                            receive_count: count,
                            sent_at: sent,
                        })
                        .map_err(|_| id)
                })
                .collect()
        })
        .unwrap_or_default()
}
