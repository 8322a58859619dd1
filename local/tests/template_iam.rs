//! The functions' permissions in `infra/template.yaml` against what their code sends.
//!
//! A permission missing in AWS is an outage no local test sees (the embedded engine and moto do
//! not check IAM), and one too many is access nobody needs. So the DynamoDB actions each function
//! may call are written down here, with the code paths that need them, and checked against the
//! template: changing either without the other fails this test.
//!
//! How Store operations reach DynamoDB (`shared/aws/src/dynamodb.rs`):
//! - `Store::get` → `GetItem`; `Store::query` → `Query` (on the table: it has no index).
//! - `Store::transact` → one write alone as `PutItem`/`UpdateItem`/`DeleteItem`, several as one
//!   `TransactWriteItems`, which IAM authorizes per item by the same three actions (and
//!   `ConditionCheckItem` for a `Write::Check`, which no code path sends). So what matters is
//!   the kinds of write a function makes: `Write::create/put/put_if` → `PutItem`,
//!   `Write::Update` → `UpdateItem`, `Write::Delete` → `DeleteItem`.
//! - Shared paths: every route with auth reads the access key (`api::authenticate`: `GetItem`);
//!   an `Idempotency-Key` on a POST reads and stores its record (`api::idempotency_start`,
//!   `api::commit`: `GetItem`, `PutItem`); only `redeliver_callback` claims the key first and
//!   releases the claim on a server error (`api::settle`: `DeleteItem`). Every Step Functions
//!   task loads the run and saves it under its version (`stage::advance`: `GetItem`, `PutItem`).
//! - Nothing sends `Scan`, `BatchGetItem`, `BatchWriteItem` or `DescribeTable` in AWS (the local
//!   planes' `ensure_table` creates the table; in AWS the template does).

use std::collections::BTreeSet;
use std::path::Path;

use serde_yaml::Value;

/// Function (binary) → the DynamoDB actions it needs, each with the code paths that send it.
const NEEDS: &[(&str, &[(&str, &str)])] = &[
    (
        "onboarding",
        &[
            ("GetItem", "GET /agents/{id} (auth + agent); idempotency record"),
            ("PutItem", "POST /agents: agent, profile, access key created (Write::create) with the idempotent response (api::commit)"),
        ],
    ),
    (
        "trust",
        &[
            ("GetItem", "POST /agents/{id}/credentials: the agent"),
            ("PutItem", "the access key created (Write::create)"),
            ("UpdateItem", "the agent marked claimed, callback secret set (Write::Update on claimed=false)"),
        ],
    ),
    (
        "quote",
        &[
            ("GetItem", "auth; the agent's trust profile (active_profile); GET /quotes/{id}; idempotency record"),
            ("PutItem", "POST /quotes: the quote (Write::create) + idempotent response"),
        ],
    ),
    (
        "provider_route",
        &[
            ("GetItem", "auth; the quote; GET /settlements/{id}; idempotency record"),
            ("PutItem", "POST /settlements: route, entitlement, payment outbox entry (provider::payment_outbox_write) + idempotent response; x402: payment record, route, entitlement, X402PEND entry (pay::claim_writes), confirmation, funding transfer"),
            ("UpdateItem", "x402 top-up: entitlement funded (money::fund) or failed (pay::fail)"),
            ("DeleteItem", "x402: X402PEND entry removed once funded or failed"),
        ],
    ),
    (
        "credit_entitlement",
        &[
            ("GetItem", "the route, the entitlement, an earlier confirmation; GET /credit-entitlements/{id}"),
            ("PutItem", "confirmation, route, funding transfer (provider::funding_writes)"),
            ("UpdateItem", "entitlement funded (money::fund: Write::Update on status=awaiting_funding)"),
            ("DeleteItem", "payment outbox entry removed (provider::funding_writes)"),
        ],
    ),
    (
        "run_contract",
        &[
            ("GetItem", "auth; agent, quote, entitlement, run, evidence, exception ticket; idempotency record"),
            ("PutItem", "POST /runs: run, contract, hold item, hold transfer, pending outbox (queue::pending_write); POST /runs/{id}/evidence; cancel's release transfer + run save"),
            ("UpdateItem", "money::hold (entitlement available→held); cancel: money::release (entitlement, HOLD status); x402 pay per run: entitlement funded (money::fund) or failed (pay::fail)"),
            ("DeleteItem", "x402 pay per run: X402PEND entry removed once funded or failed"),
        ],
    ),
    (
        "queue",
        &[
            ("GetItem", "run loads (stage::advance, load_run); heartbeat; contract, hold, callback record, exception ticket; ledger head and seals (ledger::append)"),
            ("Query", "GET /queue: pending_for_agent (PENDING); relay: PENDING, PAYREQ, FAILING outboxes; x402 reconciler: X402PEND; ledger pages (ledger::append)"),
            ("PutItem", "queue_state object + run save; failure: ticket, FAILING entry, callback record; redrive: ticket; relay: outbox bump (put_if), failed route; ledger lease, page, block, seal and head (ledger::append)"),
            ("UpdateItem", "failure: money::release_failed; redrive: money::rehold; relay fail_payment: entitlement failed"),
            ("DeleteItem", "dispatched_write (PENDING entry), FAILING entry cleared, payment outbox entry (payment_settled_write); sealed ledger pages (ledger::append)"),
        ],
    ),
    (
        "tokenops_execution",
        &[
            ("GetItem", "run load, evidence; GET /exceptions/{id} (auth + ticket)"),
            ("PutItem", "result package or exception ticket + run save (stage::advance)"),
        ],
    ),
    (
        "result_contract",
        &[
            ("GetItem", "run load; GET /results/{id} (auth + object)"),
            ("PutItem", "result contract + run save (stage::advance)"),
        ],
    ),
    (
        "settlement_receipt",
        &[
            ("GetItem", "run load (stage::advance)"),
            ("PutItem", "settlement receipt + run save (stage::advance)"),
        ],
    ),
    (
        "usage_receipt",
        &[
            ("GetItem", "run load, entitlement; GET /receipts/{id} (auth + object)"),
            ("PutItem", "usage receipt, capture transfer + run save"),
            ("UpdateItem", "money::capture (entitlement held→captured, HOLD status)"),
        ],
    ),
    (
        "callback",
        &[
            ("GetItem", "run load, the agent's secret (callback::agent_secret), callback record; auth; idempotency record"),
            ("PutItem", "callback record (callback::deliver) + run save; redeliver: the claim on the Idempotency-Key and its response"),
            ("DeleteItem", "redeliver: the claim released after a server error (api::settle)"),
        ],
    ),
    (
        "ledger",
        &[
            ("GetItem", "chain head and a page's seal (ledger::append), run load; auth"),
            ("Query", "pending pages (P#) under the lease; GET /ledger, GET /ledger/verify: the agent's blocks (E#)"),
            ("PutItem", "the lease (put_if on the head), a pending page, blocks and seals (Write::create), the head + run save"),
            ("DeleteItem", "sealed pages (ledger::append)"),
        ],
    ),
    (
        "attestation",
        &[
            ("GetItem", "run load; GET /attestations/{id} (auth + object)"),
            ("PutItem", "the attestation + run save (put_if on version)"),
        ],
    ),
    // The MCP tools call the API over HTTPS with the caller's key: no table access at all.
    ("mcp", &[]),
];

fn template() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `!Tag value` → (tag, value).
fn tagged(v: &Value) -> Option<(String, &Value)> {
    match v {
        Value::Tagged(t) => Some((t.tag.to_string(), &t.value)),
        _ => None,
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(s) => s
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => vec![],
    }
}

/// Every inline statement of a policy list entry, through `!If` branches.
fn statements<'a>(policy: &'a Value, out: &mut Vec<&'a Value>) {
    if let Some((tag, inner)) = tagged(policy) {
        if tag == "!If" {
            for branch in inner.as_sequence().into_iter().flatten().skip(1) {
                statements(branch, out);
            }
        }
        return;
    }
    if let Some(st) = policy.get("Statement").and_then(Value::as_sequence) {
        out.extend(st.iter());
    }
}

fn functions(doc: &Value) -> Vec<(String, String, &Value)> {
    doc["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(id, r)| {
            (
                id.as_str().unwrap().to_string(),
                r["Metadata"]["BuildProperties"]["Binary"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                &r["Properties"],
            )
        })
        .collect()
}

/// Actions with `prefix` granted to a function, checking each such statement's resource.
fn granted(props: &Value, prefix: &str, resource_ok: impl Fn(&Value) -> bool) -> BTreeSet<String> {
    let mut st = Vec::new();
    for p in props["Policies"].as_sequence().into_iter().flatten() {
        statements(p, &mut st);
    }
    let mut actions = BTreeSet::new();
    for s in st {
        let mine: Vec<String> = strings(&s["Action"])
            .into_iter()
            .filter(|a| a.starts_with(prefix))
            .collect();
        if mine.is_empty() {
            continue;
        }
        assert_eq!(s["Effect"].as_str(), Some("Allow"));
        assert!(
            resource_ok(&s["Resource"]),
            "{mine:?} on {:?}",
            s["Resource"]
        );
        actions.extend(mine);
    }
    actions
}

/// Whether an IAM action pattern (`kms:Get*`, case-insensitive) covers `action`.
fn grants(pattern: &str, action: &str) -> bool {
    let (p, a) = (pattern.to_ascii_lowercase(), action.to_ascii_lowercase());
    match p.strip_suffix('*') {
        Some(prefix) => a.starts_with(prefix),
        None => p == a,
    }
}

fn is_table_arn(v: &Value) -> bool {
    matches!(tagged(v), Some((t, inner)) if t == "!GetAtt" && inner.as_str() == Some("Table.Arn"))
}

#[test]
fn each_function_gets_exactly_the_dynamodb_actions_its_code_sends() {
    let doc = template();
    let fns = functions(&doc);
    assert_eq!(fns.len(), NEEDS.len(), "a row per function");
    for (id, binary, props) in fns {
        let (_, needs) = NEEDS
            .iter()
            .find(|(b, _)| *b == binary)
            .unwrap_or_else(|| panic!("{binary} has no row in NEEDS"));
        for p in props["Policies"].as_sequence().into_iter().flatten() {
            if let Some(m) = p.as_mapping() {
                for k in m.keys().filter_map(Value::as_str) {
                    assert!(
                        !k.contains("DynamoDB"),
                        "{id}: SAM policy template {k} (grants actions the code never sends)"
                    );
                }
            }
        }
        let got = granted(props, "dynamodb:", is_table_arn);
        let want: BTreeSet<String> = needs.iter().map(|(a, _)| format!("dynamodb:{a}")).collect();
        assert_eq!(got, want, "{id} ({binary})");
        assert!(
            needs.iter().all(|(_, why)| !why.is_empty()),
            "{binary}: every action says why"
        );
    }
}

/// Only the attestation function can sign: it alone names the KMS key and may use it, the created
/// key's policy names its role alone for signing, and no function carries a signing seed.
#[test]
fn only_the_attestation_function_has_the_signing_key() {
    let doc = template();
    let global_env = &doc["Globals"]["Function"]["Environment"]["Variables"];
    let seeds = ["ATTESTATION_KEY_SEED", "ATTESTATION_LOCAL_KEY_SEED"];
    for v in seeds.iter().chain(&["ATTESTATION_KMS_KEY_ID"]) {
        assert!(global_env.get(v).is_none(), "Globals must not set {v}");
    }
    assert!(doc["Parameters"].get("AttestationKeySeed").is_none());
    for (id, binary, props) in functions(&doc) {
        let env = &props["Environment"]["Variables"];
        for v in seeds {
            assert!(env.get(v).is_none(), "{id} sets {v}: keys live in KMS");
        }
        let kms = granted(
            props,
            "kms:",
            |r| matches!(tagged(r), Some((t, inner)) if t == "!Ref" && inner.as_str() == Some("AttestationKmsKeyArn")),
        );
        if binary == "attestation" {
            assert!(env.get("ATTESTATION_KMS_KEY_ID").is_some());
            assert_eq!(
                kms,
                BTreeSet::from(["kms:GetPublicKey".to_string(), "kms:Sign".to_string()])
            );
        } else {
            assert!(env.get("ATTESTATION_KMS_KEY_ID").is_none(), "{id}");
            assert!(kms.is_empty(), "{id} has KMS permissions: {kms:?}");
        }
    }
    let key = &doc["Resources"]["AttestationSigningKey"];
    assert_eq!(key["Type"].as_str(), Some("AWS::KMS::Key"));
    assert_eq!(
        key["Properties"]["KeySpec"].as_str(),
        Some("ECC_NIST_EDWARDS25519")
    );
    assert_eq!(key["Properties"]["KeyUsage"].as_str(), Some("SIGN_VERIFY"));
    let policy = key["Properties"]["KeyPolicy"]["Statement"]
        .as_sequence()
        .unwrap();
    for s in policy {
        let actions = strings(&s["Action"]);
        let principal = &s["Principal"]["AWS"];
        let is_role = matches!(tagged(principal), Some((t, inner))
            if t == "!GetAtt" && inner.as_str() == Some("AttestationFunctionRole.Arn"));
        let uses = actions.iter().any(|a| grants(a, "kms:Sign"));
        if is_role {
            assert_eq!(actions, ["kms:Sign", "kms:GetPublicKey"]);
        } else {
            assert!(!uses, "only the attestation role may sign: {actions:?}");
        }
    }
}
