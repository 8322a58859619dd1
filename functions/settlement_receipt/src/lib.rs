//! Stage 10 — settlement receipt: ties the run's cost to the settlement and funding transfer that
//! paid for it, and to the run's hold.

use tokenops::api::object_item;
use tokenops::config::Ctx;
use tokenops::error::TaskError;
use tokenops::ids::{now_rfc3339, run_object_id};
use tokenops::model::*;
use tokenops::money::transfer_id;
use tokenops::proof::jcs;
use tokenops::run_state::RunState;
use tokenops::stage::{advance, run_contract, task_input, Step};
use tokenops::store::{Key, Store, Write};

pub const STAGE: &str = "settlement_receipt";

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
        RunState::SettlementReceipted,
        |rec| async move {
            let agent = rec.payload.agent_id.clone();
            let contract: RunContract = run_contract(&ctx.store, input, &rec).await?;
            // x402: the on-chain payment behind the credits, so the receipt proves the payment.
            let payment = match ctx.store.get(&Key::object(&contract.settlement_id)).await? {
                Some(item) => item.decode::<ProviderRoute>()?.payment,
                None => None,
            };
            let receipt = SettlementReceipt {
                object_type: "settlement_receipt".into(),
                receipt_id: run_object_id("srcpt", &rec.payload.run_id),
                run_id: rec.payload.run_id.clone(),
                settlement_id: contract.settlement_id.clone(),
                settlement_reference: payment
                    .as_ref()
                    .and_then(|p| p.transaction.clone())
                    .unwrap_or_else(|| contract.settlement_id.clone()),
                provider: contract.provider.clone(),
                credit_entitlement_id: contract.credit_entitlement_id.clone(),
                credits_cost: contract.credits_held,
                funding_transfer_id: transfer_id("fund", &contract.settlement_id),
                hold_transfer_id: contract.hold_transfer_id.clone(),
                issued_at: now_rfc3339(),
                payment,
            };
            let mut payload = rec.payload.clone();
            payload.state = RunState::SettlementReceipted;
            let id = receipt.receipt_id.clone();
            payload.link(
                STAGE,
                &id,
                "settlement_receipt",
                ctx.config.url(&format!("/receipts/{id}")),
                jcs::digest(&receipt).ok(),
            );
            let writes = vec![Write::put(object_item(
                &id,
                "settlement_receipt",
                &agent,
                Some(&payload.run_id),
                &receipt,
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
