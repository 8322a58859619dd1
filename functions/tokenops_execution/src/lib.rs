//! Stage 8 — TokenOps execution: the evidence review. A sufficient review produces the
//! `tokenops_result_package`; a partial one produces an `agent_exception_ticket` (evidence gap) and
//! the run waits on the agent, hold intact. Also `GET /exceptions/{id}` (tickets and replay packages).

use tokenops::api::{object_item, owned_object, serve};
use tokenops::config::Ctx;
use tokenops::error::{ApiError, TaskError};
use tokenops::evidence::{self, EvidenceBundle, EvidenceStatus, ReviewContext};
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::ids::{now_rfc3339, run_object_id};
use tokenops::model::*;
use tokenops::proof::jcs;
use tokenops::run_state::RunState;
use tokenops::stage::{advance_from, load, run_contract, task_input, Step};
use tokenops::store::{Key, Store, Write};

pub const STAGE: &str = "tokenops_execution";

pub async fn handle<S: Store>(ctx: &Ctx<S>, req: ApiRequest) -> ApiResponse {
    serve(ctx, req, |call| async move {
        match call.req.operation {
            Op::GetException => {
                let agent = call.caller.agent()?;
                let id = call.req.param("exception_id");
                if !(id.starts_with("exc_") || id.starts_with("replay_")) {
                    return Err(ApiError::not_found("exception_id", id));
                }
                Ok(ApiResponse::json(
                    200,
                    &owned_object(&ctx.store, id, agent, "exception_id")
                        .await?
                        .doc,
                ))
            }
            other => Err(ApiError::internal(format!(
                "tokenops_execution does not serve {other}"
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
    let input = &input;
    // A redelivered review of a run already waiting on evidence changes nothing.
    let rec = load(&ctx.store, &run_id).await?;
    if rec.payload.state == RunState::ExceptionOpen {
        let id = rec
            .payload
            .objects
            .get("exception_recovery")
            .and_then(|l| l.last())
            .map(|l| l.id.clone())
            .unwrap_or_default();
        return Ok(TaskOutput {
            run_id,
            stage: STAGE.into(),
            object_id: id,
            state: rec.payload.state,
            evidence_status: Some("partial".into()),
        });
    }
    let mut out = advance_from(
        &ctx.store,
        rec,
        STAGE,
        RunState::Reviewed,
        |rec| async move {
            let agent = rec.payload.agent_id.clone();
            let run_id = rec.payload.run_id.clone();
            let contract: RunContract = run_contract(&ctx.store, input, &rec).await?;
            let bundle: EvidenceBundle = ctx
                .store
                .get(&Key::object(&run_object_id("evidence", &run_id)))
                .await?
                .ok_or_else(|| TaskError::Internal("run has no evidence".into()))?
                .decode()?;
            let review = evidence::review(
                &bundle,
                &ReviewContext {
                    run_id: run_id.clone(),
                    requested_tool: contract.requested_tool.clone(),
                    requested_capability: contract.requested_capability.clone(),
                    credit_entitlement_id: contract.credit_entitlement_id.clone(),
                    settlement_provider: Some(contract.provider.clone()),
                    paid_quote_id: (contract.provider == tokenops::x402::X402)
                        .then(|| contract.quote_id.clone()),
                },
            )
            .map_err(|e| TaskError::BadInput(e.to_string()))?;
            let mut payload = rec.payload.clone();
            if review.evidence_status == EvidenceStatus::Sufficient {
                let result_id = run_object_id("result", &run_id);
                let package = ResultPackage {
                    package_type: "tokenops_result_package".into(),
                    operating_tool: OPERATING_TOOL.into(),
                    evidence_status: review.evidence_status,
                    evidence_score: review.evidence_score,
                    received_inputs: review.received_inputs,
                    uploaded_files: review.uploaded_files.clone(),
                    settlement_reference: review
                        .settlement_trail
                        .settlement_reference
                        .clone()
                        .unwrap_or_else(|| contract.settlement_id.clone()),
                    usage_receipt: run_object_id("usage", &run_id),
                    callback_delivery: "ready".into(),
                    client_deliverable: CLIENT_DELIVERABLE.into(),
                    result_id: result_id.clone(),
                    run_id: run_id.clone(),
                    review,
                    created_at: now_rfc3339(),
                };
                payload.state = RunState::Reviewed;
                payload.link(
                    STAGE,
                    &result_id,
                    "tokenops_result_package",
                    ctx.config.url(&format!("/results/{result_id}")),
                    jcs::digest(&package).ok(),
                );
                let writes = vec![Write::put(object_item(
                    &result_id,
                    "tokenops_result_package",
                    &agent,
                    Some(&run_id),
                    &package,
                )?)];
                Ok(Step {
                    object_id: result_id,
                    payload,
                    writes,
                    evidence_status: Some("sufficient".into()),
                })
            } else {
                let exception_id =
                    format!("{}_{}", run_object_id("exc", &run_id), rec.payload.replays);
                let ticket = ExceptionTicket {
                    object_type: "agent_exception_ticket".into(),
                    requested_tool: contract.requested_tool.clone(),
                    exception_type: "evidence_gap".into(),
                    status: "waiting_on_requesting_agent".into(),
                    missing_items: review.open_items.clone(),
                    safe_to_replay: false,
                    exception_id: exception_id.clone(),
                    run_id: run_id.clone(),
                    evidence_score: review.evidence_score,
                    supply_evidence_url: ctx.config.url(&format!("/runs/{run_id}/evidence")),
                    created_at: now_rfc3339(),
                    failed_stage: None,
                    error: None,
                    redrive_url: None,
                };
                payload.state = RunState::ExceptionOpen;
                payload.link(
                    "exception_recovery",
                    &exception_id,
                    "agent_exception_ticket",
                    ctx.config.url(&format!("/exceptions/{exception_id}")),
                    jcs::digest(&ticket).ok(),
                );
                let writes = vec![Write::put(object_item(
                    &exception_id,
                    "agent_exception_ticket",
                    &agent,
                    Some(&run_id),
                    &ticket,
                )?)];
                Ok(Step {
                    object_id: exception_id,
                    payload,
                    writes,
                    evidence_status: Some("partial".into()),
                })
            }
        },
    )
    .await?;
    if out.evidence_status.is_none() {
        out.evidence_status = Some("sufficient".into());
    }
    Ok(out)
}
