//! The Lambda edge: configuration from the environment (once per cold start), API Gateway HTTP API
//! (payload v2) events to and from [`ApiRequest`]/[`ApiResponse`], and task errors as Lambda
//! diagnostics with stable `errorType`s.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};

use crate::dynamodb::DynamoStore;
use crate::kms::KmsSigner;
use crate::sfn::StepFunctions;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use aws_sdk_dynamodb::config::BehaviorVersion;
use aws_types::region::Region;
use aws_types::sdk_config::SdkConfig;
use tokenops::config::{Config, Ctx, RetryPolicy};
use tokenops::error::TaskError;
use tokenops::http::{parse_query, ApiRequest, ApiResponse};
use tokenops::proof::dsse::AttestationKey;
use tokenops::proof::signer::{SignError, Signer};

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

/// The API's public URL (`PUBLIC_BASE_URL`): what links in objects point at, and where the MCP
/// function sends the tools' calls.
pub fn public_base_url() -> Result<String, ConfigError> {
    env("PUBLIC_BASE_URL")
}

/// An optional setting: unset and blank are the same (the template passes empty parameters).
fn env_set(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The AWS SDK configuration, built once per cold start from what Lambda hands every function:
/// the region (`AWS_REGION`), the execution role's credentials (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) and, for emulators, `AWS_ENDPOINT_URL`. Each
/// client adds the SDK's defaults (standard retries, tokio sleep, the rustls HTTPS client).
pub fn sdk() -> Result<&'static SdkConfig, ConfigError> {
    static SDK: std::sync::OnceLock<SdkConfig> = std::sync::OnceLock::new();
    if let Some(sdk) = SDK.get() {
        return Ok(sdk);
    }
    let region = env("AWS_REGION").or_else(|_| env("AWS_DEFAULT_REGION"))?;
    let credentials = Credentials::new(
        env("AWS_ACCESS_KEY_ID")?,
        env("AWS_SECRET_ACCESS_KEY")?,
        std::env::var("AWS_SESSION_TOKEN").ok(),
        None,
        "lambda-environment",
    );
    let mut builder = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(SharedCredentialsProvider::new(credentials));
    if let Some(url) = env_set("AWS_ENDPOINT_URL") {
        builder = builder.endpoint_url(url);
    }
    Ok(SDK.get_or_init(|| builder.build()))
}

/// The SQS run queue from `QUEUE_URL` (and `DLQ_URL` for the monitor's dead-letter depth).
pub fn sqs_queue_from_env() -> Result<crate::sqs::SqsQueue, ConfigError> {
    let dlq = env_set("DLQ_URL");
    Ok(crate::sqs::SqsQueue::new(
        aws_sdk_sqs::Client::new(sdk()?),
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
    match (env_set(SIGNER_KMS_KEY), env_set(SIGNER_LOCAL_SEED)) {
        (Some(key), None) => Ok(Arc::new(
            KmsSigner::connect(aws_sdk_kms::Client::new(sdk()?), key.trim()).await?,
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
    // `AWS_ENDPOINT_URL_DYNAMODB` (the SDKs' per-service endpoint setting) before the global one:
    // the emulator sends DynamoDB straight to its upstream, one hop fewer per request.
    let mut ddb = aws_sdk_dynamodb::config::Builder::from(sdk()?);
    if let Some(url) = env_set("AWS_ENDPOINT_URL_DYNAMODB") {
        ddb = ddb.endpoint_url(url);
    }
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(ddb.build()),
        &env("TABLE_NAME")?,
    );
    let mut provider_secrets = BTreeMap::new();
    if let Ok(s) = env("TEST_PROVIDER_SECRET") {
        provider_secrets.insert(tokenops::provider::TEST_PROVIDER.to_string(), s);
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
        transient: tokenops::backoff::Backoff::TRANSIENT,
        x402: tokenops::x402::X402Config::from_lookup(|k| std::env::var(k).ok())
            .map_err(|e| ConfigError::Invalid(e.name, e.reason))?,
    };
    Ok(Ctx::new(store, config))
}

/// The x402 facilitator and chain clients, when `X402_FACILITATOR_URL` configures x402.
pub fn x402_ports<S>(
    ctx: &Ctx<S>,
) -> Result<Option<tokenops::x402::pay::HttpX402>, reqwest::Error> {
    ctx.config
        .x402
        .as_ref()
        .map(tokenops::x402::pay::HttpX402::from_config)
        .transpose()
}

/// Structured logs at the level Lambda's logging controls set (`AWS_LAMBDA_LOG_LEVEL`, else
/// `RUST_LOG` as a plain level, else INFO), JSON when `AWS_LAMBDA_LOG_FORMAT` is JSON. No secrets
/// or evidence are ever passed to tracing fields.
pub fn init_logging() {
    use tracing_subscriber::filter::LevelFilter;
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|l| l.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let fmt = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .without_time();
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let _ = if json {
        fmt.json().try_init()
    } else {
        fmt.try_init()
    };
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

/// A task error as Step Functions sees it: `errorType` (matched by the ASL's Retry and Catch)
/// and a message.
pub fn diagnostic(e: TaskError) -> lambda_runtime::Diagnostic {
    lambda_runtime::Diagnostic {
        error_type: e.error_type().to_string(),
        error_message: e.to_string(),
    }
}

/// The Step Functions orchestrator from `STATE_MACHINE_ARN`.
pub fn step_functions_from_env() -> Result<StepFunctions, ConfigError> {
    Ok(StepFunctions::new(
        crate::sfn::client(aws_sdk_sfn::config::Builder::from(sdk()?)),
        &env("STATE_MACHINE_ARN")?,
    ))
}

/// The test provider as the Lambda functions run it: its secret from the configuration, the
/// API's own URL, confirming before `request_payment` returns (a frozen sandbox would never run a
/// background task).
pub fn test_provider<S>(ctx: &Ctx<S>) -> tokenops::provider::TestProvider {
    let secret = ctx
        .config
        .provider_secrets
        .get(tokenops::provider::TEST_PROVIDER)
        .cloned()
        .unwrap_or_default();
    tokenops::provider::TestProvider::new(
        &ctx.config.public_base_url,
        &secret,
        std::time::Duration::ZERO,
    )
    .confirm_inline()
}

/// An EventBridge schedule's event (the relay's tick).
pub fn is_scheduled(ev: &Value) -> bool {
    ev.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
}

/// SQS event records → deliveries (body must be a run message; a bad body is reported per record).
pub fn sqs_deliveries(ev: &Value) -> Vec<Result<tokenops::ports::Delivery, String>> {
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
                        .map(|body| tokenops::ports::Delivery {
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
