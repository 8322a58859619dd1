//! The tools: what each does, its input and output schemas, and the API request a call becomes.
//! The output schemas are the JSON Schemas the API serves at `GET /schemas/{object}`.

use serde_json::{json, Map, Value};
use tokenops::http::ROUTES;
use tokenops::ids::{parse_id_of, ID_PARAMS};

use crate::api::Request;

/// What a tool call does.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// One API request.
    Call(Request),
    /// `GET /attestations/{id}` and `GET /keys`, then the offline check.
    VerifyAttestation { attestation_id: String },
    /// `GET /ledger` (the agent's, or one run's), then the offline chain check.
    VerifyLedger { run_id: Option<String> },
}

/// A tool's arguments do not fit: the problem names the field.
#[derive(Debug, PartialEq)]
pub struct BadArgument {
    pub field: String,
    pub detail: String,
}

pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// The API route the tool calls (method, path pattern): its request and response schemas
    /// are the tool's input and output schemas. `None`: a tool of its own (below).
    pub route: Option<(&'static str, &'static str)>,
    pub read_only: bool,
}

/// The idempotency key every POST tool takes.
fn idempotency_property() -> Value {
    json!({"type": "string", "description": "Optional. The same key returns the first answer instead of acting twice; by default the tool derives one from its arguments, so a retried call is safe."})
}

fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

impl ToolSpec {
    /// The tool's input: the route's request body schema, its path parameters as properties,
    /// and `idempotency_key` on a POST.
    pub fn input_schema(&self) -> Value {
        let Some((method, path)) = self.route else {
            return match self.name {
                "get_object" => {
                    json!({"type": "object", "properties": {"id": {"type": "string", "description": "An object id from a run's payload (quote_, stl_, cred_, run_, exc_, replay_, result_, rcontract_, usage_, srcpt_, att_, agent_)."}}, "required": ["id"], "additionalProperties": false})
                }
                "verify_attestation" => {
                    json!({"type": "object", "properties": {"attestation_id": {"type": "string", "description": "The attestation's id (att_...), from get_run's objects."}}, "required": ["attestation_id"], "additionalProperties": false})
                }
                _ => {
                    json!({"type": "object", "properties": {"run_id": {"type": "string", "description": "Optional: only this run's entries."}}, "additionalProperties": false})
                }
            };
        };
        let op = tokenops::openapi::operation(method, path);
        let mut schema = match op.and_then(|o| o.request) {
            Some(f) => tokenops::openapi::standalone(f, false),
            None => json!({"type": "object", "properties": {}}),
        };
        let params = path_params(path);
        if let Some(m) = schema.as_object_mut() {
            m.insert("type".into(), json!("object"));
            let props = m.entry("properties").or_insert_with(|| json!({}));
            for p in &params {
                props[*p] = json!({"type": "string", "description": format!("The {}, from get_run's payload.", p.replace('_', " "))});
            }
            if method == "POST" {
                props["idempotency_key"] = idempotency_property();
            }
            let required = m.entry("required").or_insert_with(|| json!([]));
            if let Some(r) = required.as_array_mut() {
                for p in params {
                    r.push(json!(p));
                }
            }
        }
        schema
    }

    /// The tool's structured result: the route's success body, when it is one object schema.
    pub fn output_schema(&self) -> Option<Value> {
        let (method, path) = self.route?;
        let op = tokenops::openapi::operation(method, path)?;
        let mut ok = op.responses.iter().filter(|r| r.status < 300);
        let first = ok.next()?;
        if ok.next().is_some() {
            return None;
        }
        let schema = tokenops::openapi::standalone(first.schema, true);
        (schema["type"] == "object").then_some(schema)
    }
}

pub const TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "onboard",
        description: "Register an agent with TokenOps. Call this first, once. Arguments are the agent manifest (name, owner_contact, requested_tools, callback_url where TokenOps sends signed run callbacks). Returns agent_id, trust_profile_id and a one-time claim_token for claim_credentials.",
        route: Some(("POST", "/agents")),
        read_only: false,
    },
    ToolSpec {
        name: "claim_credentials",
        description: "Exchange the claim_token from onboard for the agent's access key and callback signing secret. Call once, right after onboard: this session then uses the key for every other tool. Returns the credential envelope; keep callback_signing_secret to verify callbacks.",
        route: Some(("POST", "/agents/{agent_id}/credentials")),
        read_only: false,
    },
    ToolSpec {
        name: "get_quote",
        description: "Price a unit of work: the credits a run costs and how long the price holds (with x402 enabled, the on-chain amount too). Call before fund and submit_run. Arguments: requested_tool (\"tokenops\") and requested_capability (\"tokenops_result_package\"). Returns the quote with its quote_id.",
        route: Some(("POST", "/quotes")),
        read_only: false,
    },
    ToolSpec {
        name: "fund",
        description: "Buy credits against a quote through a settlement provider (provider \"test_provider\" in the reference setup). Returns the provider route with its credit_entitlement_id; the entitlement is funded once the provider confirms (read it with get_object). Use the credit_entitlement_id in submit_run. With provider \"x402\" the credits are paid on chain: the tool answers payment required (x402) and takes the payment in _meta[\"x402/payment\"].",
        route: Some(("POST", "/settlements")),
        read_only: false,
    },
    ToolSpec {
        name: "submit_run",
        description: "Start one paid run: the quote, a funded credit_entitlement_id, the evidence bundle and a callback_url. TokenOps holds the credits, queues the run and carries it through review, result, receipts, callback, ledger and attestation. Returns the run's full loop payload (state queued); follow it with get_run (or subscribe to tokenops://runs/{run_id}). Where x402 is on, leave out credit_entitlement_id to pay per run: the tool answers payment required (x402) and takes the payment in _meta[\"x402/payment\"].",
        route: Some(("POST", "/runs")),
        read_only: false,
    },
    ToolSpec {
        name: "get_run",
        description: "Read a run's full loop payload: its state (callback_delivered when done), next_action, and the id, URL and sha256 of every object the loop made. Poll this after submit_run or supply_evidence.",
        route: Some(("GET", "/runs/{run_id}")),
        read_only: true,
    },
    ToolSpec {
        name: "supply_evidence",
        description: "When a run stops with an exception ticket (next_action supply_evidence: the evidence was partial), send the missing records. The run is replayed with them. Arguments: run_id and the evidence supplement (exception_id, records). Returns the run's payload; poll get_run.",
        route: Some(("POST", "/runs/{run_id}/evidence")),
        read_only: false,
    },
    ToolSpec {
        name: "cancel_run",
        description: "Cancel a run that has not started work (queued or dispatched): its credits are released. Returns the run's payload in state cancelled, or an error if the run is past the point of cancelling.",
        route: Some(("POST", "/runs/{run_id}/cancel")),
        read_only: false,
    },
    ToolSpec {
        name: "redeliver_callback",
        description: "Send a run's signed callback again (the agent's endpoint was down). Returns the delivery record.",
        route: Some(("POST", "/runs/{run_id}/callback/redeliver")),
        read_only: false,
    },
    ToolSpec {
        name: "get_object",
        description: "Fetch any loop object by id: quote_, stl_ (provider route), cred_ (credit entitlement), run_, exc_/replay_ (exception ticket, replay package), result_/rcontract_ (result package, result contract), usage_/srcpt_ (receipts), att_ (attestation), agent_. Use the ids in get_run's objects.",
        route: None,
        read_only: true,
    },
    ToolSpec {
        name: "verify_attestation",
        description: "Check a run's attestation offline: fetch it and TokenOps's public keys, verify the DSSE signature (Ed25519) and that the readable statement equals the signed one. Returns valid and the signed statement (the run, its objects' digests, the payment). Same check as `tokenops verify`.",
        route: None,
        read_only: true,
    },
    ToolSpec {
        name: "verify_ledger",
        description: "Check the agent's hash-chained ledger offline (every entry's hash and link), or one run's entries with run_id. Returns valid, the entry count and the first broken link if any. Same check as `tokenops verify`.",
        route: None,
        read_only: true,
    },
    ToolSpec {
        name: "queue_status",
        description: "The agent's runs waiting for dispatch and the queue's health (dead letters, consumer heartbeat). Use when a run stays queued.",
        route: Some(("GET", "/queue")),
        read_only: true,
    },
];

/// The kinds of id a parameter takes (`run_id` → `run_`), from the API's id table.
fn id_prefixes(param: &str) -> Option<&'static [&'static str]> {
    ID_PARAMS
        .iter()
        .find(|(name, _)| *name == param)
        .map(|(_, prefixes)| *prefixes)
}

/// The API path that reads an object, found by its id in the route table: the `GET /<things>/{id}`
/// route whose id parameter takes that kind of id.
fn object_path(id: &str) -> Result<String, BadArgument> {
    ROUTES
        .iter()
        .filter(|r| r.method == "GET")
        .find_map(|r| {
            let (base, last) = r.pattern.rsplit_once('/')?;
            let param = last.strip_prefix('{')?.strip_suffix('}')?;
            let prefixes = id_prefixes(param)?;
            let ok = !base.contains('{') && parse_id_of(prefixes, id, param).is_ok();
            ok.then(|| format!("{base}/{id}"))
        })
        .ok_or_else(|| BadArgument {
            field: "id".into(),
            detail: format!("{id:?} is not the id of a TokenOps object"),
        })
}

fn string_arg(args: &Map<String, Value>, field: &str) -> Result<String, BadArgument> {
    match args.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(BadArgument {
            field: field.into(),
            detail: format!("{field} must be a non-empty string"),
        }),
        None => Err(BadArgument {
            field: field.into(),
            detail: format!("{field} is required"),
        }),
    }
}

/// An id argument, checked as the API checks the path parameter of that name.
fn id_arg(args: &Map<String, Value>, field: &str) -> Result<String, BadArgument> {
    let raw = string_arg(args, field)?;
    let prefixes = id_prefixes(field).unwrap_or_default();
    parse_id_of(prefixes, &raw, field).map_err(|_| BadArgument {
        field: field.into(),
        detail: format!(
            "{field} must be an id starting with {}_",
            prefixes.join("_ or ")
        ),
    })
}

/// The idempotency key of a POST: the caller's, or one derived from the tool and its arguments,
/// so a model that retries a call gets the first answer instead of a second effect. Derived only
/// where the API scopes keys to the calling agent: on a public route (onboarding) two agents
/// with the same manifest would share one, and the second would get the first one's agent.
fn idempotency_key(tool: &str, public: bool, args: &Map<String, Value>) -> Option<String> {
    if let Some(Value::String(k)) = args.get("idempotency_key") {
        return Some(k.clone());
    }
    if public {
        return None;
    }
    let mut bytes = format!("{tool}\n").into_bytes();
    bytes.extend(tokenops::proof::jcs::canonical_json(&Value::Object(args.clone())).ok()?);
    let digest = tokenops::proof::jcs::sha256_hex(&bytes);
    Some(format!("mcp-{}", &digest[..32]))
}

/// The call of a tool that maps onto a route: its path parameters from the arguments (checked as
/// ids), and on a POST the other arguments as the body.
fn routed(
    tool: &str,
    (method, pattern): (&'static str, &str),
    args: &Map<String, Value>,
) -> Result<Plan, BadArgument> {
    let params = path_params(pattern);
    let mut path = pattern.to_string();
    for p in &params {
        path = path.replace(&format!("{{{p}}}"), &id_arg(args, p)?);
    }
    let post = method == "POST";
    let mut body = args.clone();
    body.remove("idempotency_key");
    for p in &params {
        body.remove(*p);
    }
    Ok(Plan::Call(Request {
        method,
        path,
        body: post.then_some(Value::Object(body)),
        idempotency_key: if post {
            let public = ROUTES
                .iter()
                .any(|r| r.method == method && r.pattern == pattern && !r.auth);
            idempotency_key(tool, public, args)
        } else {
            None
        },
        payment_signature: None,
    }))
}

/// What a call of `tool` with `args` does; `None` for a tool that does not exist.
pub fn plan(tool: &str, args: &Map<String, Value>) -> Option<Result<Plan, BadArgument>> {
    let spec = TOOLS.iter().find(|t| t.name == tool)?;
    if let Some(route) = spec.route {
        return Some(routed(tool, route, args));
    }
    Some(match tool {
        "get_object" => string_arg(args, "id")
            .and_then(|id| object_path(&id))
            .map(|path| Plan::Call(Request::get(path))),
        "verify_attestation" => id_arg(args, "attestation_id")
            .map(|attestation_id| Plan::VerifyAttestation { attestation_id }),
        "verify_ledger" => match args.get("run_id") {
            None => Ok(Plan::VerifyLedger { run_id: None }),
            Some(_) => id_arg(args, "run_id").map(|r| Plan::VerifyLedger { run_id: Some(r) }),
        },
        // A tool without a route and without a plan here: the unit test below names it.
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn every_tool_has_an_object_input_schema_and_a_plan() {
        for t in TOOLS {
            assert_eq!(t.input_schema()["type"], "object", "{}", t.name);
            if let Some(o) = t.output_schema() {
                assert_eq!(o["type"], "object", "{}", t.name);
            }
            if let Some((method, path)) = t.route {
                assert!(
                    tokenops::openapi::operation(method, path).is_some(),
                    "{}: {method} {path} is a route",
                    t.name
                );
            }
            assert!(plan(t.name, &Map::new()).is_some(), "{}", t.name);
        }
        assert!(plan("nope", &Map::new()).is_none());
    }

    #[test]
    fn a_bad_id_names_its_field() {
        let e = plan("get_run", &args(json!({"run_id": "quote_1"})))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.field, "run_id");
        let e = plan("get_run", &Map::new()).unwrap().unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.detail.as_str()),
            ("run_id", "run_id is required")
        );
        let e = plan("get_object", &args(json!({"id": "../keys"})))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.field, "id");
    }

    #[test]
    fn objects_are_found_by_their_prefix() {
        for (id, path) in [
            ("att_1", "/attestations/att_1"),
            ("srcpt_run_1", "/receipts/srcpt_run_1"),
            ("rcontract_run_1", "/results/rcontract_run_1"),
            ("cred_1", "/credit-entitlements/cred_1"),
        ] {
            let Plan::Call(r) = plan("get_object", &args(json!({ "id": id })))
                .unwrap()
                .unwrap()
            else {
                panic!("a call");
            };
            assert_eq!(r.path, path);
        }
    }

    #[test]
    fn a_retried_post_carries_the_same_idempotency_key() {
        let a = args(json!({"quote_id": "quote_1", "provider": "test_provider", "credits": 2}));
        let key = |a: &Map<String, Value>| match plan("fund", a).unwrap().unwrap() {
            Plan::Call(r) => r.idempotency_key.unwrap(),
            _ => panic!("a call"),
        };
        assert_eq!(key(&a), key(&a));
        let mut other = a.clone();
        other.insert("credits".into(), json!(3));
        assert_ne!(key(&a), key(&other));
        let mut given = a.clone();
        given.insert("idempotency_key".into(), json!("mine"));
        assert_eq!(key(&given), "mine");
        let Plan::Call(r) = plan("fund", &given).unwrap().unwrap() else {
            panic!("a call");
        };
        assert!(r.body.unwrap().get("idempotency_key").is_none());
    }

    #[test]
    fn onboarding_derives_no_key_so_two_agents_with_one_manifest_are_two_agents() {
        let manifest = args(json!({"name": "a", "owner_contact": "o@example.com"}));
        let Plan::Call(r) = plan("onboard", &manifest).unwrap().unwrap() else {
            panic!("a call");
        };
        assert_eq!(r.idempotency_key, None);
        let mut given = manifest.clone();
        given.insert("idempotency_key".into(), json!("mine"));
        let Plan::Call(r) = plan("onboard", &given).unwrap().unwrap() else {
            panic!("a call");
        };
        assert_eq!(r.idempotency_key.as_deref(), Some("mine"));
    }
}
