//! Discovery: the TokenOps manifest (seed fields `tool_id`, `accepted_inputs`, `outputs`, plus
//! evidence requirements, output modes, workflow states and every entry point); the OpenAPI
//! document is generated in [`crate::openapi`] from the same route table.

use serde_json::{json, Value};

use crate::evidence::Category;
use crate::http::ROUTES;
use crate::model::{schemas, OPERATING_TOOL, PATH};
use crate::run_state::ALL;

/// `x402`: the deployment's x402 settings, listed as a payment method so an agent knows what it
/// may pay with before it asks.
pub fn manifest(base_url: &str, x402: Option<&crate::x402::X402Config>) -> Value {
    let mut payment_methods = vec![json!({
        "provider": crate::provider::TEST_PROVIDER,
        "flow": "POST /settlements, then the provider's signed confirmation webhook funds the entitlement",
    })];
    if let Some(c) = x402 {
        let mut m = json!(c.method(None));
        m["flow"] = json!("HTTP 402 (x402 v2): POST /runs without credit_entitlement_id, or POST /settlements with provider x402, answers 402 with PAYMENT-REQUIRED; resend with PAYMENT-SIGNATURE");
        m["x402_version"] = json!(crate::x402::X402_VERSION);
        payment_methods.push(m);
    }
    let entry_points: Vec<Value> = ROUTES
        .iter()
        .map(|r| json!({"method": r.method, "path": r.pattern, "stage": r.stage, "operation": r.operation.as_str(), "requires_access_key": r.auth}))
        .collect();
    json!({
        "tool_id": OPERATING_TOOL,
        "accepted_inputs": ["settlement_reference", "payment_request", "usage_receipt", "agent_task_run", "digital_asset_context"],
        "outputs": ["tokenops_review", "evidence_summary", "operating_record"],
        "evidence_requirements": Category::ALL.iter().map(|c| json!({"category": c, "requirement": c.human_name()})).collect::<Vec<_>>(),
        "evidence_formats": ["json_record", "csv_export", "file_manifest"],
        "output_modes": ["tokenops_result_package", "signed_callback", "dsse_attestation", "hash_chained_ledger"],
        "workflow_states": ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "path": PATH,
        "entry_points": entry_points,
        "schemas": schemas().keys().map(|k| format!("{}/schemas/{k}", base_url.trim_end_matches('/'))).collect::<Vec<_>>(),
        "openapi_url": format!("{}/openapi.json", base_url.trim_end_matches('/')),
        "authentication": "Authorization: Bearer <access key> from the credential envelope",
        "idempotency": "every POST accepts Idempotency-Key",
        "errors": "application/problem+json (RFC 9457)",
        "payment_methods": payment_methods,
    })
}

pub use crate::openapi::openapi;
