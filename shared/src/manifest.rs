//! Discovery: the TokenOps manifest (seed fields `tool_id`, `accepted_inputs`, `outputs`, plus
//! evidence requirements, output modes, workflow states and every entry point); the OpenAPI
//! document is generated in [`crate::openapi`] from the same route table.

use serde_json::{json, Value};

use crate::evidence::Category;
use crate::http::ROUTES;
use crate::model::{schemas, OPERATING_TOOL, PATH};
use crate::run_state::ALL;

pub fn manifest(base_url: &str) -> Value {
    let entry_points: Vec<Value> = ROUTES
        .iter()
        .map(|r| json!({"method": r.method, "path": r.pattern, "stage": r.stage, "operation": r.operation, "requires_access_key": r.auth}))
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
    })
}

pub use crate::openapi::openapi;
