//! Stage 11 — usage receipt: captures the run's hold (credits debited exactly once, in the same
//! transaction as the receipt) and issues the seed's `tokenops_usage_receipt`. Also
//! `GET /receipts/{id}` for settlement and usage receipts.

use tokenops::api::{object_item, owned_object, serve};
use tokenops::config::Ctx;
use tokenops::error::{ApiError, TaskError};
use tokenops::evidence::EvidenceStatus;
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::ids::{now_rfc3339, run_object_id};
use tokenops::model::*;
use tokenops::money;
use tokenops::proof::jcs;
use tokenops::run_state::RunState;
use tokenops::stage::{advance, run_contract, task_input, Step};
use tokenops::store::{Key, Store, Write};

pub const STAGE: &str = "usage_receipt";

pub async fn handle<S: Store>(ctx: &Ctx<S>, req: ApiRequest) -> ApiResponse {
    serve(ctx, req, |call| async move {
        match call.req.operation {
            Op::GetReceipt => {
                let agent = call.caller.agent()?;
                let id = call.req.param("receipt_id");
                if !(id.starts_with("usage_") || id.starts_with("srcpt_")) {
                    return Err(ApiError::not_found("receipt_id", id));
                }
                Ok(ApiResponse::json(
                    200,
                    &owned_object(&ctx.store, id, agent, "receipt_id").await?.doc,
                ))
            }
            other => Err(ApiError::internal(format!(
                "usage_receipt does not serve {other}"
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
    advance(
        &ctx.store,
        &run_id,
        STAGE,
        RunState::UsageCaptured,
        |rec| async move {
            let agent = rec.payload.agent_id.clone();
            let run_id = rec.payload.run_id.clone();
            let contract: RunContract = run_contract(&ctx.store, input, &rec).await?;
            let ent = ctx
                .store
                .get(&Key::object(&contract.credit_entitlement_id))
                .await?
                .ok_or_else(|| TaskError::Internal("entitlement missing".into()))?;
            let (capture, mut writes) = money::capture(
                &contract.credit_entitlement_id,
                &agent,
                &run_id,
                contract.credits_held,
            );
            let result_url = rec
                .payload
                .first_link("tokenops_execution")
                .map(|l| l.url.clone())
                .unwrap_or_default();
            let receipt = UsageReceipt {
                receipt_id: run_object_id("usage", &run_id),
                receipt_type: "tokenops_usage_receipt".into(),
                operating_tool: OPERATING_TOOL.into(),
                credits_debited: contract.credits_held,
                // The hold already left `available`; this is what remains for other runs.
                remaining_credits: ent.get_num("available"),
                evidence_status: EvidenceStatus::Sufficient,
                result_status: "ready".into(),
                callback_status: "ready".into(),
                run_id: run_id.clone(),
                credit_entitlement_id: contract.credit_entitlement_id.clone(),
                capture_transfer_id: capture.transfer_id,
                result_url,
                issued_at: now_rfc3339(),
            };
            let mut payload = rec.payload.clone();
            payload.state = RunState::UsageCaptured;
            let id = receipt.receipt_id.clone();
            payload.link(
                STAGE,
                &id,
                "tokenops_usage_receipt",
                ctx.config.url(&format!("/receipts/{id}")),
                jcs::digest(&receipt).ok(),
            );
            writes.push(Write::put(object_item(
                &id,
                "tokenops_usage_receipt",
                &agent,
                Some(&run_id),
                &receipt,
            )?));
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
