//! Discovery: the TokenOps manifest (seed fields `tool_id`, `accepted_inputs`, `outputs`, plus
//! evidence requirements, output modes, workflow states and every entry point) and an OpenAPI
//! document generated from the same route table.

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

/// The RFC 9457 problem document every error answers with (see [`crate::error::ApiError`]).
pub fn problem_schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "format": "uri", "description": "stable problem type URI"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599, "description": "the HTTP status code (RFC 9457 §3.1.2)"},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "the offending input, where there is one"}
        }
    })
}

/// The pattern a path parameter must match (see [`crate::ids::check_param`]).
fn param_pattern(name: &str) -> String {
    match crate::ids::ID_PARAMS.iter().find(|(n, _)| *n == name) {
        Some((_, prefixes)) => format!(
            "^({})_[a-z0-9_-]{{1,{}}}$",
            prefixes.join("|"),
            crate::ids::MAX_ID_SUFFIX
        ),
        None => format!("^[a-z0-9][a-z0-9_-]{{0,{}}}$", crate::ids::MAX_NAME - 1),
    }
}

pub fn openapi(base_url: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let params: Vec<Value> = r
            .pattern
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string", "pattern": param_pattern(p)}}))
            .collect();
        let mut op = json!({
            "operationId": r.operation,
            "tags": [r.stage],
            "parameters": params,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                "4XX": {"description": "Problem", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
                "5XX": {"description": "Problem", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            }
        });
        if r.auth {
            op["security"] = json!([{"accessKey": []}]);
        }
        if r.method == "POST" {
            if let Some(a) = op["parameters"].as_array_mut() {
                a.push(json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255}}));
            }
        }
        let entry = paths
            .entry(r.pattern.to_string())
            .or_insert_with(|| json!({}));
        entry[r.method.to_ascii_lowercase()] = op;
    }
    let mut component_schemas = serde_json::to_value(schemas()).unwrap_or_else(|_| json!({}));
    component_schemas["Problem"] = problem_schema();
    json!({
        "openapi": "3.1.0",
        "info": {"title": "TokenOps API", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": base_url}],
        "paths": paths,
        "components": {
            "securitySchemes": {"accessKey": {"type": "http", "scheme": "bearer"}},
            "schemas": component_schemas,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_documents_the_problem_and_parameter_shapes() {
        let doc = openapi("http://localhost");
        let problem = &doc["components"]["schemas"]["Problem"];
        assert!(problem["properties"]["status"].is_object(), "{problem}");
        assert!(problem["properties"].get("status_code").is_none());
        // The document a real error renders has exactly the documented members.
        let e = serde_json::to_value(crate::error::ApiError::not_found("run_id", "x")).unwrap();
        for k in e.as_object().unwrap().keys() {
            assert!(problem["properties"].get(k).is_some(), "undocumented {k}");
        }
        let p = &doc["paths"]["/receipts/{receipt_id}"]["get"]["parameters"][0]["schema"];
        assert_eq!(p["pattern"], "^(usage|srcpt)_[a-z0-9_-]{1,80}$");
    }
}
