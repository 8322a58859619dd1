//! Stage 9 — result contract: what was delivered (the result package), where, and its digest.
//! Also `GET /results/{id}` for result packages and result contracts.

use std::collections::BTreeMap;

use tokenops::api::{object_item, owned_object, serve};
use tokenops::config::Ctx;
use tokenops::error::{ApiError, TaskError};
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::ids::{now_rfc3339, run_object_id};
use tokenops::model::*;
use tokenops::proof::jcs;
use tokenops::run_state::RunState;
use tokenops::stage::{advance, task_input, Step};
use tokenops::store::{Store, Write};

pub const STAGE: &str = "result_contract";

pub async fn handle<S: Store>(ctx: &Ctx<S>, req: ApiRequest) -> ApiResponse {
    serve(ctx, req, |call| async move {
        match call.req.operation {
            Op::GetResult => {
                let agent = call.caller.agent()?;
                let id = call.req.param("result_id");
                if !(id.starts_with("result_") || id.starts_with("rcontract_")) {
                    return Err(ApiError::not_found("result_id", id));
                }
                Ok(ApiResponse::json(
                    200,
                    &owned_object(&ctx.store, id, agent, "result_id").await?.doc,
                ))
            }
            other => Err(ApiError::internal(format!(
                "result_contract does not serve {other}"
            ))),
        }
    })
    .await
}

pub async fn run_task<S: Store>(
    ctx: &Ctx<S>,
    input: serde_json::Value,
) -> Result<TaskOutput, TaskError> {
    let run_id = task_input(&input)?;
    advance(
        &ctx.store,
        &run_id,
        STAGE,
        RunState::ResultContracted,
        |rec| async move {
            let link = rec
                .payload
                .first_link("tokenops_execution")
                .cloned()
                .ok_or_else(|| TaskError::Internal("no result package".into()))?;
            let package =
                owned_object(&ctx.store, &link.id, &rec.payload.agent_id, "result_id").await?;
            let digest =
                jcs::digest(&package.doc).map_err(|e| TaskError::Internal(e.to_string()))?;
            let contract = ResultContract {
                object_type: "result_contract".into(),
                result_contract_id: run_object_id("rcontract", &rec.payload.run_id),
                run_id: rec.payload.run_id.clone(),
                result_package_id: link.id.clone(),
                result_url: link.url.clone(),
                client_deliverable: CLIENT_DELIVERABLE.into(),
                media_type: "application/json".into(),
                digests: BTreeMap::from([(
                    "tokenops_result_package".to_string(),
                    format!("sha256:{digest}"),
                )]),
                delivered_at: now_rfc3339(),
            };
            let mut payload = rec.payload.clone();
            payload.state = RunState::ResultContracted;
            let id = contract.result_contract_id.clone();
            payload.link(
                STAGE,
                &id,
                "result_contract",
                ctx.config.url(&format!("/results/{id}")),
                jcs::digest(&contract).ok(),
            );
            let writes = vec![Write::put(object_item(
                &id,
                "result_contract",
                &payload.agent_id,
                Some(&payload.run_id),
                &contract,
            )?)];
            Ok(Step {
                object_id: id,
                payload,
                writes,
                evidence_status: None,
            })
        },
    )
    .await
}
