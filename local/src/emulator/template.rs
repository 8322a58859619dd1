//! Reads `infra/template.yaml` — the file SAM deploys — into what the emulator creates: tables,
//! queues, the state machine and the functions (binary, environment, HTTP routes, SQS source).
//! There is no second definition to drift: a resource the template drops disappears here too.
//!
//! Intrinsics understood: `!Ref`, `!GetAtt`, `!Sub` (pseudo parameters, `${Res}`, `${Res.Attr}`).
//! Anything else (e.g. `!If`) must be given as an override by the emulator, or it is an error
//! naming the variable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

pub const REGION: &str = "us-east-1";
pub const ACCOUNT: &str = "123456789012";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("template: {0}")]
    Shape(String),
    #[error("template: cannot resolve {what}: {reason}")]
    Unresolved { what: String, reason: String },
}

#[derive(Clone, Debug)]
pub struct TableSpec {
    pub logical_id: String,
    pub name: String,
    pub hash_key: String,
    pub range_key: Option<String>,
    pub ttl_attribute: Option<String>,
}

#[derive(Clone, Debug)]
pub struct QueueSpec {
    pub logical_id: String,
    pub name: String,
    pub visibility_timeout: i64,
    /// (dead-letter queue logical id, maxReceiveCount)
    pub redrive: Option<(String, i64)>,
}

#[derive(Clone, Debug)]
pub struct StateMachineSpec {
    pub logical_id: String,
    pub name: String,
    pub definition_path: PathBuf,
    /// `${Name}` → function logical id (from `!GetAtt Fn.Arn`)
    pub substitutions: BTreeMap<String, String>,
    /// `STANDARD` or `EXPRESS`.
    pub kind: String,
}

#[derive(Clone, Debug)]
pub struct FunctionSpec {
    pub logical_id: String,
    pub name: String,
    pub binary: String,
    pub timeout_secs: u64,
    pub memory_mb: u64,
    /// Unresolved environment (Globals merged with the function's own).
    pub env: BTreeMap<String, Value>,
    /// HTTP API routes: (method, path pattern).
    pub routes: Vec<(String, String)>,
    /// SQS event source: (queue logical id, batch size).
    pub sqs_source: Option<(String, i32)>,
    /// `EventBridgeRule` events, by name: the emulator does not play them (it says so).
    pub event_rules: Vec<String>,
    /// `Schedule` events.
    pub schedules: Vec<ScheduleSpec>,
}

#[derive(Clone, Debug)]
pub struct ScheduleSpec {
    pub event: String,
    /// `rate(...)` / `cron(...)`, as written.
    pub expression: String,
}

/// A `rate(N unit)` schedule expression as a period; `None` for anything else (`cron(...)`).
pub fn rate_period(expression: &str) -> Option<std::time::Duration> {
    let inner = expression.trim().strip_prefix("rate(")?.strip_suffix(')')?;
    let (n, unit) = inner.trim().split_once(' ')?;
    let n: u64 = n.trim().parse().ok().filter(|n| *n > 0)?;
    let secs = match unit.trim() {
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86_400,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(n * secs))
}

#[derive(Clone, Debug)]
pub struct Template {
    pub stack: String,
    pub tables: Vec<TableSpec>,
    pub queues: Vec<QueueSpec>,
    pub state_machines: Vec<StateMachineSpec>,
    pub functions: Vec<FunctionSpec>,
    /// Each parameter's `Default` (what a deploy without overrides gets).
    pub parameter_defaults: BTreeMap<String, String>,
}

/// What a resource resolves to once it exists in the emulator.
#[derive(Clone, Debug)]
pub enum Physical {
    Table {
        name: String,
    },
    Queue {
        url: String,
        arn: String,
        name: String,
    },
    StateMachine {
        arn: String,
        name: String,
    },
    Function {
        name: String,
        arn: String,
    },
}

pub fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}")
}

fn tag_of(v: &Value) -> Option<(String, &Value)> {
    match v {
        Value::Tagged(t) => Some((t.tag.to_string(), &t.value)),
        _ => None,
    }
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping().and_then(|m| m.get(key))
}

fn str_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `!Sub` with only pseudo parameters (names, known before anything exists).
fn sub_pseudo(text: &str, stack: &str) -> String {
    text.replace("${AWS::StackName}", stack)
        .replace("${AWS::Region}", REGION)
        .replace("${AWS::AccountId}", ACCOUNT)
        .replace("${AWS::Partition}", "aws")
        .replace("${AWS::URLSuffix}", "amazonaws.com")
}

impl Template {
    pub fn load(path: &Path, stack: &str) -> Result<Template, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|e| TemplateError::Read {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let doc: Value = serde_yaml::from_str(&text).map_err(|e| TemplateError::Read {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Template::from_doc(&doc, dir, stack)
    }

    fn from_doc(doc: &Value, dir: &Path, stack: &str) -> Result<Template, TemplateError> {
        let resources = get(doc, "Resources")
            .and_then(Value::as_mapping)
            .ok_or_else(|| TemplateError::Shape("no Resources".into()))?;
        let globals = get(doc, "Globals").and_then(|g| get(g, "Function"));
        let global_env = globals
            .and_then(|g| get(g, "Environment"))
            .and_then(|e| get(e, "Variables"))
            .and_then(Value::as_mapping)
            .cloned()
            .unwrap_or_default();
        let global_timeout = globals
            .and_then(|g| get(g, "Timeout"))
            .and_then(Value::as_u64)
            .unwrap_or(3);
        let global_memory = globals
            .and_then(|g| get(g, "MemorySize"))
            .and_then(Value::as_u64)
            .unwrap_or(128);
        let parameter_defaults = get(doc, "Parameters")
            .and_then(Value::as_mapping)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        Some((k.as_str()?.to_string(), str_of(get(v, "Default"))?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut t = Template {
            stack: stack.into(),
            tables: vec![],
            queues: vec![],
            state_machines: vec![],
            functions: vec![],
            parameter_defaults,
        };
        for (id, res) in resources {
            let id = id.as_str().unwrap_or_default().to_string();
            let props = get(res, "Properties").cloned().unwrap_or(Value::Null);
            let physical = format!("{stack}-{id}");
            match str_of(get(res, "Type")).as_deref() {
                Some("AWS::DynamoDB::Table") => {
                    let keys = get(&props, "KeySchema")
                        .and_then(Value::as_sequence)
                        .ok_or_else(|| TemplateError::Shape(format!("{id}: no KeySchema")))?;
                    let key = |kind: &str| {
                        keys.iter()
                            .find(|k| str_of(get(k, "KeyType")).as_deref() == Some(kind))
                            .and_then(|k| str_of(get(k, "AttributeName")))
                    };
                    t.tables.push(TableSpec {
                        name: str_of(get(&props, "TableName")).unwrap_or(physical),
                        hash_key: key("HASH")
                            .ok_or_else(|| TemplateError::Shape(format!("{id}: no HASH key")))?,
                        range_key: key("RANGE"),
                        ttl_attribute: get(&props, "TimeToLiveSpecification")
                            .and_then(|s| str_of(get(s, "AttributeName"))),
                        logical_id: id,
                    });
                }
                Some("AWS::SQS::Queue") => {
                    let redrive = match get(&props, "RedrivePolicy") {
                        Some(r) => {
                            let target = get(r, "deadLetterTargetArn")
                                .and_then(getatt_target)
                                .ok_or_else(|| {
                                    TemplateError::Shape(format!(
                                        "{id}: deadLetterTargetArn must be !GetAtt <Queue>.Arn"
                                    ))
                                })?;
                            let max = get(r, "maxReceiveCount")
                                .and_then(Value::as_i64)
                                .unwrap_or(10);
                            Some((target, max))
                        }
                        None => None,
                    };
                    t.queues.push(QueueSpec {
                        name: str_of(get(&props, "QueueName")).unwrap_or(physical),
                        visibility_timeout: get(&props, "VisibilityTimeout")
                            .and_then(Value::as_i64)
                            .unwrap_or(30),
                        redrive,
                        logical_id: id,
                    });
                }
                Some("AWS::Serverless::StateMachine") => {
                    let uri = str_of(get(&props, "DefinitionUri")).ok_or_else(|| {
                        TemplateError::Shape(format!("{id}: DefinitionUri (a file) is required"))
                    })?;
                    let mut substitutions = BTreeMap::new();
                    if let Some(m) =
                        get(&props, "DefinitionSubstitutions").and_then(Value::as_mapping)
                    {
                        for (k, v) in m {
                            let name = k.as_str().unwrap_or_default().to_string();
                            let target = getatt_target(v).ok_or_else(|| {
                                TemplateError::Shape(format!(
                                    "{id}: substitution {name} must be !GetAtt <Function>.Arn"
                                ))
                            })?;
                            substitutions.insert(name, target);
                        }
                    }
                    t.state_machines.push(StateMachineSpec {
                        name: str_of(get(&props, "Name")).unwrap_or(physical),
                        definition_path: dir.join(uri),
                        substitutions,
                        kind: str_of(get(&props, "Type")).unwrap_or_else(|| "STANDARD".into()),
                        logical_id: id,
                    });
                }
                Some("AWS::Serverless::Function") => {
                    let binary = get(res, "Metadata")
                        .and_then(|m| get(m, "BuildProperties"))
                        .and_then(|b| str_of(get(b, "Binary")))
                        .ok_or_else(|| {
                            TemplateError::Shape(format!(
                                "{id}: Metadata.BuildProperties.Binary is required"
                            ))
                        })?;
                    let name = match get(&props, "FunctionName") {
                        Some(v) => match tag_of(v) {
                            Some((tag, inner)) if tag == "!Sub" => {
                                sub_pseudo(inner.as_str().unwrap_or_default(), stack)
                            }
                            _ => str_of(Some(v)).unwrap_or(physical),
                        },
                        None => physical,
                    };
                    let mut env: BTreeMap<String, Value> = global_env
                        .iter()
                        .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.clone()))
                        .collect();
                    if let Some(m) = get(&props, "Environment")
                        .and_then(|e| get(e, "Variables"))
                        .and_then(Value::as_mapping)
                    {
                        for (k, v) in m {
                            env.insert(k.as_str().unwrap_or_default().to_string(), v.clone());
                        }
                    }
                    let mut routes = vec![];
                    let mut sqs_source = None;
                    let mut event_rules = vec![];
                    let mut schedules = vec![];
                    if let Some(events) = get(&props, "Events").and_then(Value::as_mapping) {
                        for (name, ev) in events {
                            let name = name.as_str().unwrap_or_default().to_string();
                            let p = get(ev, "Properties").cloned().unwrap_or(Value::Null);
                            match str_of(get(ev, "Type")).as_deref() {
                                Some("HttpApi") => {
                                    if let (Some(m), Some(path)) =
                                        (str_of(get(&p, "Method")), str_of(get(&p, "Path")))
                                    {
                                        routes.push((m.to_ascii_uppercase(), path));
                                    }
                                }
                                Some("SQS") => {
                                    let q = get(&p, "Queue").and_then(getatt_target).ok_or_else(
                                        || {
                                            TemplateError::Shape(format!(
                                                "{id}: SQS Queue must be !GetAtt <Queue>.Arn"
                                            ))
                                        },
                                    )?;
                                    let batch =
                                        get(&p, "BatchSize").and_then(Value::as_i64).unwrap_or(10);
                                    sqs_source = Some((q, batch as i32));
                                }
                                Some("EventBridgeRule") => event_rules.push(name),
                                Some("Schedule") => {
                                    let expression =
                                        str_of(get(&p, "Schedule")).ok_or_else(|| {
                                            TemplateError::Shape(format!(
                                                "{id}.{name}: Schedule needs a Schedule expression"
                                            ))
                                        })?;
                                    schedules.push(ScheduleSpec {
                                        event: name,
                                        expression,
                                    });
                                }
                                _ => {}
                            }
                        }
                    }
                    t.functions.push(FunctionSpec {
                        timeout_secs: get(&props, "Timeout")
                            .and_then(Value::as_u64)
                            .unwrap_or(global_timeout),
                        memory_mb: get(&props, "MemorySize")
                            .and_then(Value::as_u64)
                            .unwrap_or(global_memory),
                        logical_id: id,
                        name,
                        binary,
                        env,
                        routes,
                        sqs_source,
                        event_rules,
                        schedules,
                    });
                }
                _ => {}
            }
        }
        if t.functions.is_empty() {
            return Err(TemplateError::Shape("no AWS::Serverless::Function".into()));
        }
        Ok(t)
    }

    pub fn function(&self, logical_id: &str) -> Option<&FunctionSpec> {
        self.functions.iter().find(|f| f.logical_id == logical_id)
    }
}

/// `!GetAtt X.Arn` / `!GetAtt [X, Arn]` → `X`.
fn getatt_target(v: &Value) -> Option<String> {
    let (tag, inner) = tag_of(v)?;
    if tag != "!GetAtt" {
        return None;
    }
    match inner {
        Value::String(s) => s.split_once('.').map(|(r, _)| r.to_string()),
        Value::Sequence(s) => s.first().and_then(|r| r.as_str()).map(str::to_string),
        _ => None,
    }
}

/// Resolves intrinsics once resources exist: `physical` maps logical ids, `params` parameters.
pub struct Resolver<'a> {
    pub stack: &'a str,
    pub physical: &'a BTreeMap<String, Physical>,
    pub params: &'a BTreeMap<String, String>,
}

impl Resolver<'_> {
    fn reference(&self, name: &str, what: &str) -> Result<String, TemplateError> {
        if let Some(p) = self.params.get(name) {
            return Ok(p.clone());
        }
        let unresolved = |reason: &str| TemplateError::Unresolved {
            what: what.into(),
            reason: reason.into(),
        };
        Ok(match self.physical.get(name) {
            Some(Physical::Table { name }) => name.clone(),
            Some(Physical::Queue { url, .. }) => url.clone(),
            Some(Physical::StateMachine { arn, .. }) => arn.clone(),
            Some(Physical::Function { name, .. }) => name.clone(),
            None => {
                return Err(unresolved(&format!(
                    "!Ref {name}: unknown resource or parameter"
                )))
            }
        })
    }

    fn attribute(&self, res: &str, attr: &str, what: &str) -> Result<String, TemplateError> {
        let v = match (self.physical.get(res), attr) {
            (Some(Physical::Table { name }), "Arn") => {
                format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}")
            }
            (Some(Physical::Queue { arn, .. }), "Arn") => arn.clone(),
            (Some(Physical::Queue { url, .. }), "QueueUrl") => url.clone(),
            (Some(Physical::Queue { name, .. }), "QueueName") => name.clone(),
            (Some(Physical::StateMachine { arn, .. }), "Arn") => arn.clone(),
            (Some(Physical::StateMachine { name, .. }), "Name") => name.clone(),
            (Some(Physical::Function { arn, .. }), "Arn") => arn.clone(),
            _ => {
                return Err(TemplateError::Unresolved {
                    what: what.into(),
                    reason: format!("!GetAtt {res}.{attr} is not known to the emulator"),
                })
            }
        };
        Ok(v)
    }

    /// A value (scalar or intrinsic) as a string; `what` names it in errors.
    pub fn resolve(&self, v: &Value, what: &str) -> Result<String, TemplateError> {
        if let Some(s) = str_of(Some(v)) {
            return Ok(s);
        }
        let (tag, inner) = tag_of(v).ok_or_else(|| TemplateError::Unresolved {
            what: what.into(),
            reason: "not a scalar or an intrinsic".into(),
        })?;
        match tag.as_str() {
            "!Ref" => self.reference(inner.as_str().unwrap_or_default(), what),
            "!GetAtt" => {
                let (r, a) = match inner {
                    Value::String(s) => s.split_once('.').unwrap_or((s, "")),
                    Value::Sequence(s) if s.len() == 2 => (
                        s[0].as_str().unwrap_or_default(),
                        s[1].as_str().unwrap_or_default(),
                    ),
                    _ => ("", ""),
                };
                self.attribute(r, a, what)
            }
            "!Sub" => {
                let text = sub_pseudo(inner.as_str().unwrap_or_default(), self.stack);
                let mut out = String::new();
                let mut rest = text.as_str();
                while let Some(start) = rest.find("${") {
                    out.push_str(&rest[..start]);
                    let end = rest[start..]
                        .find('}')
                        .ok_or_else(|| TemplateError::Unresolved {
                            what: what.into(),
                            reason: "unterminated ${".into(),
                        })?
                        + start;
                    let name = &rest[start + 2..end];
                    out.push_str(&match name.split_once('.') {
                        Some((r, a)) => self.attribute(r, a, what)?,
                        None => self.reference(name, what)?,
                    });
                    rest = &rest[end + 1..];
                }
                out.push_str(rest);
                Ok(out)
            }
            other => Err(TemplateError::Unresolved {
                what: what.into(),
                reason: format!("{other} is not supported by the emulator; override the value"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_template() -> Template {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
        Template::load(&path, "tokenops").expect("infra/template.yaml parses")
    }

    #[test]
    fn the_deployed_template_describes_every_stage_and_resource() {
        let t = repo_template();
        let mut binaries: Vec<&str> = t.functions.iter().map(|f| f.binary.as_str()).collect();
        binaries.sort_unstable();
        let mut path: Vec<&str> = tokenops::model::PATH.to_vec();
        path.push("mcp");
        path.sort_unstable();
        assert_eq!(
            binaries, path,
            "one function per stage of the seed's path, and the MCP door"
        );
        assert_eq!(t.tables.len(), 1);
        assert_eq!(
            (
                t.tables[0].hash_key.as_str(),
                t.tables[0].range_key.as_deref()
            ),
            ("pk", Some("sk"))
        );
        let run_queue = t
            .queues
            .iter()
            .find(|q| q.redrive.is_some())
            .expect("run queue");
        let (dlq, max) = run_queue.redrive.clone().unwrap();
        assert!(t.queues.iter().any(|q| q.logical_id == dlq));
        assert!(max >= 2);
        let queue_fn = t.functions.iter().find(|f| f.binary == "queue").unwrap();
        assert_eq!(
            queue_fn.sqs_source.as_ref().map(|s| s.0.as_str()),
            Some(run_queue.logical_id.as_str())
        );
        // Every HTTP route of the API table is served by the function of its stage.
        for r in tokenops::http::ROUTES {
            let f = t.functions.iter().find(|f| f.binary == r.stage).unwrap();
            assert!(
                f.routes
                    .iter()
                    .any(|(m, p)| m == r.method && p == r.pattern),
                "{} {} missing from {}'s events",
                r.method,
                r.pattern,
                f.logical_id
            );
        }
        // And the MCP function serves its own routes.
        let mcp_fn = t.functions.iter().find(|f| f.binary == "mcp").unwrap();
        for (m, p) in mcp::http::ROUTES {
            assert!(
                mcp_fn.routes.iter().any(|r| r.0 == m && r.1 == p),
                "{m} {p}"
            );
        }
        let routes: usize = t.functions.iter().map(|f| f.routes.len()).sum();
        assert_eq!(
            routes,
            tokenops::http::ROUTES.len() + mcp::http::ROUTES.len(),
            "no route outside ROUTES and the MCP routes"
        );
        // The state machine's substitutions name functions of the template.
        let sm = &t.state_machines[0];
        assert!(sm.definition_path.ends_with("statemachine.asl.json"));
        assert_eq!(sm.substitutions.len(), 7);
        assert!(sm.substitutions.values().all(|f| t.function(f).is_some()));
    }

    #[test]
    fn intrinsics_resolve_against_created_resources() {
        let t = repo_template();
        let mut physical = BTreeMap::new();
        physical.insert(
            "Table".to_string(),
            Physical::Table {
                name: "tokenops-Table".into(),
            },
        );
        let params = BTreeMap::from([("TestProviderSecret".to_string(), "whsec_x".to_string())]);
        let r = Resolver {
            stack: "tokenops",
            physical: &physical,
            params: &params,
        };
        let f = t.functions.iter().find(|f| f.binary == "ledger").unwrap();
        assert_eq!(
            r.resolve(&f.env["TABLE_NAME"], "TABLE_NAME").unwrap(),
            "tokenops-Table"
        );
        let p = t.functions.iter().find(|f| f.binary == "queue").unwrap();
        assert_eq!(
            r.resolve(&p.env["TEST_PROVIDER_SECRET"], "x").unwrap(),
            "whsec_x"
        );
        // !If is not evaluated: the emulator must override PUBLIC_BASE_URL, and says so.
        let e = r
            .resolve(&f.env["PUBLIC_BASE_URL"], "PUBLIC_BASE_URL")
            .unwrap_err();
        assert!(e.to_string().contains("PUBLIC_BASE_URL"), "{e}");
        assert_eq!(f.name, "tokenops-ledger");
    }

    /// The HttpApi declares its integrations itself (an OpenAPI body, to avoid a dependency
    /// cycle). API Gateway routes by that body, the emulator by the functions' events: both must
    /// send every route of ROUTES to the function of its stage, the MCP routes to the MCP
    /// function, and nothing else.
    #[test]
    fn the_api_body_integrates_every_route_with_its_stage_function() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
        let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let paths = doc["Resources"]["HttpApi"]["Properties"]["DefinitionBody"]["paths"]
            .as_mapping()
            .expect("HttpApi has an OpenAPI body with paths");
        let mut body = Vec::new();
        for (p, ops) in paths {
            for (method, op) in ops.as_mapping().unwrap() {
                let uri = match &op["x-amazon-apigateway-integration"]["uri"] {
                    Value::Tagged(t) => t.value.as_str().unwrap_or_default().to_string(),
                    other => panic!("{p:?} {method:?}: uri is not a !Sub: {other:?}"),
                };
                let stage = uri
                    .split(":function:${AWS::StackName}-")
                    .nth(1)
                    .and_then(|rest| rest.strip_suffix("/invocations"))
                    .unwrap_or_else(|| panic!("{p:?} {method:?}: unexpected uri {uri}"));
                body.push((
                    method.as_str().unwrap().to_uppercase(),
                    p.as_str().unwrap().to_string(),
                    stage.to_string(),
                ));
            }
        }
        let mut want: Vec<(String, String, String)> = tokenops::http::ROUTES
            .iter()
            .map(|r| {
                (
                    r.method.to_string(),
                    r.pattern.to_string(),
                    r.stage.to_string(),
                )
            })
            .chain(
                mcp::http::ROUTES
                    .iter()
                    .map(|(m, p)| (m.to_string(), p.to_string(), "mcp".to_string())),
            )
            .collect();
        body.sort();
        want.sort();
        assert_eq!(body, want);
    }
}
