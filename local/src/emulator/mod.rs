//! `tokenops emulator`: the deployed shape — HTTP API → Lambda functions, SQS → queue function,
//! Step Functions → task functions, DynamoDB — on one machine without Docker.
//!
//! An upstream AWS emulator (moto server; LocalStack works too) provides DynamoDB, SQS and Step
//! Functions. This process adds what moto cannot do without Docker: it **runs the real function
//! binaries** under a local Lambda Runtime API ([`lambda`]) and answers the Lambda Invoke API on
//! its front port ([`front`]), forwarding every other request upstream. Start moto with
//! `MOTO_PORT` set to the front's port and its Step Functions engine invokes our functions.
//! Resources come from `infra/template.yaml` ([`template`]); the state machine is created from the
//! ASL file with its `DefinitionSubstitutions` filled (moto's CloudFormation ignores them); HTTP
//! routes reach the API functions as API Gateway v2 events ([`apigw`]); an SQS event-source
//! mapping with `ReportBatchItemFailures` feeds the queue function ([`poll_queue`]).
//!
//! What moto (5.2.5) lacks and the emulator plays instead: EventBridge `Schedule` events
//! ([`events`]), and Step Functions `StartSyncExecution` for the Express run path ([`sfn`]: an
//! execution in moto, awaited — read its notes).
//!
//! Signing: moto's KMS has no Ed25519 (`ECC_NIST_EDWARDS25519`) keys, so the function the
//! template gives a KMS key (`ATTESTATION_KMS_KEY_ID`) gets a local key instead: a random seed
//! per emulator start in `ATTESTATION_LOCAL_KEY_SEED`, the emulator-only setting of
//! `tokenops_aws::lambda::signer_from_env`. An upstream with Ed25519 KMS keys can be used by passing
//! `ATTESTATION_KMS_KEY_ID` in [`EmulatorOptions::env`].

pub mod apigw;
pub mod events;
pub mod front;
pub mod lambda;
pub mod sfn;
pub mod template;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use rand::RngCore;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use self::front::Front;
use self::lambda::{Function, Functions, Outcome};
use self::template::{function_arn, Physical, Resolver, Template, ACCOUNT, REGION};

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    #[error(
        "function {function}: binary {binary} not found in {dir} (build it: cargo build --bins)"
    )]
    Binary {
        function: String,
        binary: String,
        dir: PathBuf,
    },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("upstream {upstream}: {reason}")]
    Upstream { upstream: String, reason: String },
}

#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    pub template: PathBuf,
    pub stack: String,
    /// The upstream AWS emulator (moto: `http://127.0.0.1:5000`).
    pub upstream: String,
    /// The front (Lambda Invoke + forwarding): moto's `MOTO_PORT` must be this port.
    pub listen: String,
    /// The HTTP API.
    pub api_listen: String,
    /// Where the function binaries are (`target/debug`, or cargo lambda's `target/lambda`).
    pub bin_dir: PathBuf,
    pub max_instances: usize,
    /// Overrides every queue's visibility timeout (tests: redelivery in seconds, not minutes).
    pub visibility_timeout: Option<i64>,
    /// Extra environment for every function (after the template's).
    pub env: BTreeMap<String, String>,
    /// Every `Schedule` event fires at this period instead of its `rate(…)` (tests: seconds).
    pub schedule_interval: Option<Duration>,
}

pub struct Emulator {
    pub info: Value,
    pub front_url: String,
    pub api_url: String,
    stop: tokio::sync::watch::Sender<bool>,
}

fn random_b64(n: usize) -> String {
    use base64::Engine as _;
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn bind(addr: &str) -> Result<TcpListener, EmulatorError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| EmulatorError::Listen {
            addr: addr.into(),
            reason: e.to_string(),
        })
}

/// SQS and Step Functions clients for an emulator endpoint (static test credentials); the
/// DynamoDB one is `tokenops_aws::local_client`.
pub fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
    aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "emulator"))
            .build(),
    )
}

pub fn sfn_client(endpoint: &str) -> aws_sdk_sfn::Client {
    use aws_sdk_sfn::config::{BehaviorVersion, Credentials, Region};
    tokenops_aws::sfn::client(
        aws_sdk_sfn::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "emulator")),
    )
}

impl Emulator {
    pub async fn start(opts: EmulatorOptions) -> Result<Emulator, EmulatorError> {
        let t = Template::load(&opts.template, &opts.stack)?;
        let up = |reason: String| EmulatorError::Upstream {
            upstream: opts.upstream.clone(),
            reason,
        };
        let front_listener = bind(&opts.listen).await?;
        let api_listener = bind(&opts.api_listen).await?;
        let front_url = format!(
            "http://{}",
            front_listener.local_addr().map_err(|e| up(e.to_string()))?
        );
        let api_addr = api_listener.local_addr().map_err(|e| up(e.to_string()))?;
        let api_url = format!("http://{api_addr}");
        let http = reqwest::Client::new();

        // moto executes ASL only when asked; LocalStack has no such switch (404 is fine).
        let _ = http
            .post(format!("{}/moto-api/config", opts.upstream))
            .header("content-type", "application/json")
            .body(json!({"stepfunctions": {"execute_state_machine": true}}).to_string())
            .send()
            .await;

        // Resources, in dependency order: tables, queues (dead-letter queues first), functions
        // (names only), state machines.
        let mut physical: BTreeMap<String, Physical> = BTreeMap::new();
        let ddb = tokenops_aws::local_client(&opts.upstream);
        for table in &t.tables {
            create_table(&ddb, table).await.map_err(up)?;
            physical.insert(
                table.logical_id.clone(),
                Physical::Table {
                    name: table.name.clone(),
                },
            );
        }
        let sqs = sqs_client(&opts.upstream);
        let mut queues = t.queues.clone();
        queues.sort_by_key(|q| q.redrive.is_some());
        for q in &queues {
            let mut req = sqs.create_queue().queue_name(&q.name).attributes(
                QueueAttributeName::VisibilityTimeout,
                opts.visibility_timeout
                    .unwrap_or(q.visibility_timeout)
                    .to_string(),
            );
            if let Some((dlq, max)) = &q.redrive {
                let Some(Physical::Queue { arn, .. }) = physical.get(dlq) else {
                    return Err(up(format!(
                        "{}: dead-letter queue {dlq} missing",
                        q.logical_id
                    )));
                };
                req = req.attributes(
                    QueueAttributeName::RedrivePolicy,
                    json!({"deadLetterTargetArn": arn, "maxReceiveCount": max}).to_string(),
                );
            }
            let url = req
                .send()
                .await
                .map_err(|e| {
                    up(format!(
                        "CreateQueue {}: {}",
                        q.name,
                        aws_sdk_sqs::error::DisplayErrorContext(&e)
                    ))
                })?
                .queue_url
                .unwrap_or_default();
            physical.insert(
                q.logical_id.clone(),
                Physical::Queue {
                    arn: format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{}", q.name),
                    url,
                    name: q.name.clone(),
                },
            );
        }
        for f in &t.functions {
            physical.insert(
                f.logical_id.clone(),
                Physical::Function {
                    name: f.name.clone(),
                    arn: function_arn(&f.name),
                },
            );
        }
        let sfn = sfn_client(&opts.upstream);
        for sm in &t.state_machines {
            let asl = std::fs::read_to_string(&sm.definition_path)
                .map_err(|e| up(format!("{}: {e}", sm.definition_path.display())))?;
            let mut definition = asl;
            for (name, fn_id) in &sm.substitutions {
                let Some(Physical::Function { arn, .. }) = physical.get(fn_id) else {
                    return Err(up(format!("substitution {name}: no function {fn_id}")));
                };
                definition = definition.replace(&format!("${{{name}}}"), arn);
            }
            let arn = format!("arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{}", sm.name);
            let created = sfn
                .create_state_machine()
                .name(&sm.name)
                .definition(&definition)
                .r#type(aws_sdk_sfn::types::StateMachineType::from(sm.kind.as_str()))
                .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/{}-states", opts.stack))
                .send()
                .await;
            if let Err(e) = created {
                let msg = format!("{}", aws_sdk_sfn::error::DisplayErrorContext(&e));
                if !msg.contains("AlreadyExists") {
                    return Err(up(format!("CreateStateMachine {}: {msg}", sm.name)));
                }
                sfn.update_state_machine()
                    .state_machine_arn(&arn)
                    .definition(&definition)
                    .send()
                    .await
                    .map_err(|e| {
                        up(format!(
                            "UpdateStateMachine {}: {}",
                            sm.name,
                            aws_sdk_sfn::error::DisplayErrorContext(&e)
                        ))
                    })?;
            }
            physical.insert(
                sm.logical_id.clone(),
                Physical::StateMachine {
                    arn,
                    name: sm.name.clone(),
                },
            );
        }

        // Functions: the template's environment resolved, then the emulator's overrides.
        let mut params = t.parameter_defaults.clone();
        params.extend([
            (
                "TestProviderSecret".to_string(),
                format!("whsec_{}", random_b64(24)),
            ),
            ("StageName".to_string(), "local".to_string()),
        ]);
        params.extend(opts.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut overrides = BTreeMap::from([
            ("PUBLIC_BASE_URL".to_string(), api_url.clone()),
            ("ALLOW_LOOPBACK_CALLBACKS".to_string(), "true".to_string()),
        ]);
        overrides.extend(opts.env.clone());
        let resolver = Resolver {
            stack: &opts.stack,
            physical: &physical,
            params: &params,
        };
        let local_signer_seed = random_b64(32);
        let mut fns = Vec::new();
        for f in &t.functions {
            let binary = lambda::find_binary(&opts.bin_dir, &f.binary).ok_or_else(|| {
                EmulatorError::Binary {
                    function: f.name.clone(),
                    binary: f.binary.clone(),
                    dir: opts.bin_dir.clone(),
                }
            })?;
            let mut env = vec![
                ("AWS_ENDPOINT_URL".to_string(), front_url.clone()),
                // DynamoDB needs nothing from the front: straight to the upstream.
                ("AWS_ENDPOINT_URL_DYNAMODB".into(), opts.upstream.clone()),
                ("AWS_REGION".into(), REGION.into()),
                ("AWS_DEFAULT_REGION".into(), REGION.into()),
                ("AWS_ACCESS_KEY_ID".into(), "test".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
                (
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
                    f.memory_mb.to_string(),
                ),
                (
                    "RUST_LOG".into(),
                    std::env::var("TOKENOPS_FUNCTION_LOG").unwrap_or_else(|_| "warn".into()),
                ),
            ];
            for (k, v) in &f.env {
                if k == tokenops_aws::lambda::SIGNER_KMS_KEY && !overrides.contains_key(k) {
                    // No Ed25519 KMS upstream: the signer gets a local key (see the module doc).
                    env.push((
                        tokenops_aws::lambda::SIGNER_LOCAL_SEED.to_string(),
                        local_signer_seed.clone(),
                    ));
                    continue;
                }
                let value = match overrides.get(k) {
                    Some(o) => o.clone(),
                    None => resolver.resolve(v, &format!("{}.{k}", f.logical_id))?,
                };
                env.push((k.clone(), value));
            }
            for (k, v) in &overrides {
                if !f.env.contains_key(k) && !k.starts_with(char::is_uppercase) {
                    continue;
                }
                if !f.env.contains_key(k) {
                    env.push((k.clone(), v.clone()));
                }
            }
            fns.push(Function::new(
                &f.name,
                &function_arn(&f.name),
                binary,
                env,
                Duration::from_secs(f.timeout_secs),
                opts.max_instances,
            ));
        }
        let functions = Functions::new(fns);

        let routes: Vec<apigw::ApiRoute> = t
            .functions
            .iter()
            .flat_map(|f| {
                f.routes.iter().map(|(m, p)| apigw::ApiRoute {
                    method: m.clone(),
                    pattern: p.clone(),
                    function: f.name.clone(),
                })
            })
            .collect();
        // EventBridge: schedules. The run path is an Express workflow, which emits no
        // status-change events, so no rule of the template listens for events the emulator
        // could make; one that does is named, not silently dropped.
        let mut schedules = Vec::new();
        for f in &t.functions {
            for r in &f.event_rules {
                tracing::warn!(rule = %format!("{}.{r}", f.logical_id), "the emulator plays EventBridge schedules only; this rule never fires");
            }
            for s in &f.schedules {
                let period = match (opts.schedule_interval, template::rate_period(&s.expression)) {
                    (Some(p), _) | (None, Some(p)) => p,
                    (None, None) => {
                        return Err(up(format!(
                            "{}.{}: {} is not a rate(…) expression; give --schedule-interval",
                            f.logical_id, s.event, s.expression
                        )))
                    }
                };
                let rule = format!("{}-{}{}", opts.stack, f.logical_id, s.event);
                schedules.push((
                    f.name.clone(),
                    format!("arn:aws:events:{REGION}:{ACCOUNT}:rule/{rule}"),
                    period,
                ));
            }
        }
        let physical_json: BTreeMap<String, Value> = physical
            .iter()
            .map(|(k, p)| {
                (
                    k.clone(),
                    match p {
                        Physical::Table { name } => json!({"type": "table", "name": name}),
                        Physical::Queue { url, arn, name } => {
                            json!({"type": "queue", "url": url, "arn": arn, "name": name})
                        }
                        Physical::StateMachine { arn, name } => {
                            json!({"type": "state_machine", "arn": arn, "name": name})
                        }
                        Physical::Function { name, arn } => {
                            json!({"type": "function", "name": name, "arn": arn})
                        }
                    },
                )
            })
            .collect();
        let info = json!({
            "api_url": api_url,
            "endpoint_url": front_url,
            "upstream": opts.upstream,
            "stack": opts.stack,
            "resources": physical_json,
            "functions": functions.names(),
            "routes": routes.len(),
            "schedules": schedules.iter().map(|(f, rule, p)| json!({"rule": rule, "function": f, "period_seconds": p.as_secs_f64()})).collect::<Vec<_>>(),
        });
        let front = Front {
            functions,
            upstream: opts.upstream.clone(),
            http,
            faults: front::Faults::default(),
            info: Arc::new(info.clone()),
            duplicate_sqs: Arc::new(AtomicBool::new(false)),
            duplicated_batches: Arc::default(),
            sfn: sfn.clone(),
            timings: front::Timings::default(),
        };
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        serve(
            front_listener,
            axum::Router::new()
                .fallback(front::handle)
                .with_state(front.clone()),
            stop_rx.clone(),
        );
        serve(
            api_listener,
            axum::Router::new()
                .fallback(apigw::handle)
                .with_state(apigw::Api {
                    front: front.clone(),
                    routes: Arc::new(routes),
                    domain: api_addr.to_string(),
                }),
            stop_rx.clone(),
        );
        // SQS event-source mappings: Lambda starts with five pollers, each invoking the function
        // with its own batch, so five batches are in flight at once (AWS adds more with the
        // backlog; the emulator keeps five).
        for f in &t.functions {
            if let Some((queue_id, batch)) = &f.sqs_source {
                if let Some(Physical::Queue { url, arn, .. }) = physical.get(queue_id) {
                    for _ in 0..SQS_POLLERS {
                        tokio::spawn(poll_queue(
                            front.clone(),
                            sqs.clone(),
                            url.clone(),
                            arn.clone(),
                            f.name.clone(),
                            *batch,
                            stop_rx.clone(),
                        ));
                    }
                }
            }
        }
        for (function, rule_arn, period) in schedules {
            tokio::spawn(events::run_schedule(
                front.clone(),
                function,
                rule_arn,
                period,
                stop_rx.clone(),
            ));
        }
        Ok(Emulator {
            info,
            front_url,
            api_url,
            stop,
        })
    }

    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

fn serve(listener: TcpListener, app: axum::Router, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
}

/// Creates a table the template declares. It must be the table the adapter uses (keys pk/sk,
/// TTL on ttl) — anything else would fail at the first request — so it is created the one way
/// the adapter creates its table, `DynamoStore::ensure_table`.
async fn create_table(
    ddb: &aws_sdk_dynamodb::Client,
    t: &template::TableSpec,
) -> Result<(), String> {
    let declared = (
        t.hash_key.as_str(),
        t.range_key.as_deref(),
        t.ttl_attribute.as_deref(),
    );
    if declared != ("pk", Some("sk"), Some("ttl")) {
        return Err(format!(
            "{}: keys and TTL {declared:?} are not the store adapter's (pk, sk, ttl)",
            t.logical_id
        ));
    }
    tokenops_aws::DynamoStore::new(ddb.clone(), &t.name)
        .ensure_table()
        .await
        .map_err(|e| format!("CreateTable {}: {e}", t.name))
}

/// Concurrent pollers per SQS event-source mapping (Lambda's initial five).
const SQS_POLLERS: usize = 5;

/// Lambda's SQS event-source mapping: receive a batch, invoke the function with an SQS event,
/// delete what did not fail (`ReportBatchItemFailures`); a function error fails the whole batch.
async fn poll_queue(
    front: Front,
    sqs: aws_sdk_sqs::Client,
    url: String,
    arn: String,
    function: String,
    batch: i32,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let received = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(batch.clamp(1, 10))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await;
        let msgs = match received {
            Ok(r) => r.messages.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(queue = %url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "receive failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if msgs.is_empty() {
            continue;
        }
        let records: Vec<Value> = msgs
            .iter()
            .map(|m| {
                let attributes: serde_json::Map<String, Value> = m
                    .attributes
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str().to_string(), Value::String(v.clone())))
                    .collect();
                json!({
                    "messageId": m.message_id,
                    "receiptHandle": m.receipt_handle,
                    "body": m.body,
                    "attributes": attributes,
                    "messageAttributes": {},
                    "md5OfBody": m.md5_of_body,
                    "eventSource": "aws:sqs",
                    "eventSourceARN": arn,
                    "awsRegion": REGION,
                })
            })
            .collect();
        let event = json!({ "Records": records }).to_string().into_bytes();
        let deliveries = if front.duplicate_sqs.load(Ordering::SeqCst) {
            2
        } else {
            1
        };
        let mut failed: Option<Vec<String>> = Some(vec![]);
        for delivery in 0..deliveries {
            if delivery > 0 {
                front.duplicated_batches.fetch_add(1, Ordering::SeqCst);
            }
            match front.invoke(&function, event.clone()).await {
                Some(Outcome::Ok(out)) => {
                    let ids: Vec<String> = serde_json::from_slice::<Value>(&out)
                        .ok()
                        .and_then(|v| v["batchItemFailures"].as_array().cloned())
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_string))
                        .collect();
                    if let Some(f) = failed.as_mut() {
                        f.extend(ids);
                    }
                }
                other => {
                    tracing::warn!(%function, outcome = ?other.map(|o| format!("{o:?}")), "batch failed; every message will be redelivered");
                    failed = None;
                }
            }
        }
        let Some(failed) = failed else { continue };
        for m in &msgs {
            let id = m.message_id.clone().unwrap_or_default();
            if failed.contains(&id) {
                continue;
            }
            if let Some(h) = &m.receipt_handle {
                if let Err(e) = sqs
                    .delete_message()
                    .queue_url(&url)
                    .receipt_handle(h)
                    .send()
                    .await
                {
                    tracing::warn!(message_id = %id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "delete failed");
                }
            }
        }
    }
}
