//! Stage 14 — attestation: an in-toto Statement v1 whose subjects are the run's result package,
//! result contract, usage receipt, settlement receipt and ledger head (sha256 each), in a DSSE
//! envelope signed with Ed25519 through the signing port (`ctx.config.signer`: the local key, or
//! the KMS key in AWS). `GET /keys` serves the signer's public key; verification works offline.

use serde_json::json;
use tokenops::api::{object_item, owned_object, serve};
use tokenops::config::Ctx;
use tokenops::error::{ApiError, StoreError, TaskError};
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::ids::{now_rfc3339, run_object_id};
use tokenops::model::{Attestation, KeySet, TaskOutput};
use tokenops::proof::dsse::{sign_statement, DsseError, Statement, Subject};
use tokenops::proof::signer::Signer;
use tokenops::stage::{load, run_contract, task_input};
use tokenops::store::{Store, Write};

pub const STAGE: &str = "attestation";
pub const PREDICATE_TYPE: &str = "https://tokenops.dev/attestation/full-loop/v1";

/// The configured signer; a process without one is misconfigured (the attestation function is
/// started with [`tokenops_aws::lambda::signing_ctx_from_env`]).
fn signer<S>(ctx: &Ctx<S>) -> Result<&dyn Signer, &'static str> {
    ctx.config
        .signer()
        .ok_or("no attestation signer is configured in this process")
}

/// A signing failure as a task error: a transient one (KMS throttled or unavailable) is retried
/// by the state machine like a store outage (`StoreUnavailable` is the retried error type).
fn sign_failure(e: DsseError) -> TaskError {
    match e {
        DsseError::Sign(s) if s.transient() => TaskError::StoreUnavailable(s.to_string()),
        other => TaskError::Internal(format!("attestation signing: {other}")),
    }
}

pub async fn handle<S: Store>(ctx: &Ctx<S>, req: ApiRequest) -> ApiResponse {
    serve(ctx, req, |call| async move {
        match call.req.operation {
            Op::GetKeys => Ok(ApiResponse::json(
                200,
                &KeySet {
                    keys: vec![signer(ctx).map_err(ApiError::internal)?.public_key()],
                },
            )),
            Op::GetAttestation => {
                let agent = call.caller.agent()?;
                let id = tokenops::ids::parse_id(
                    "att",
                    call.req.param("attestation_id"),
                    "attestation_id",
                )?;
                Ok(ApiResponse::json(
                    200,
                    &owned_object(&ctx.store, &id, agent, "attestation_id")
                        .await?
                        .doc,
                ))
            }
            other => Err(ApiError::internal(format!(
                "attestation does not serve {other}"
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
    let signer = signer(ctx).map_err(|e| TaskError::Internal(e.into()))?;
    for _ in 0..3 {
        let rec = load(&ctx.store, &run_id).await?;
        let p = &rec.payload;
        if let Some(l) = p.first_link(STAGE) {
            return Ok(TaskOutput {
                run_id,
                stage: STAGE.into(),
                object_id: l.id.clone(),
                state: p.state,
                evidence_status: None,
            });
        }
        let Some(ledger_head) = p.first_link("ledger") else {
            return Err(TaskError::InvalidTransition {
                run_id,
                state: p.state.as_str().into(),
                stage: STAGE,
            });
        };
        let mut subject = Vec::new();
        for (stage, name) in [
            ("tokenops_execution", "tokenops_result_package"),
            ("result_contract", "result_contract"),
            ("usage_receipt", "tokenops_usage_receipt"),
            ("settlement_receipt", "settlement_receipt"),
        ] {
            let l = p
                .first_link(stage)
                .ok_or_else(|| TaskError::Internal(format!("run has no {stage} object")))?;
            subject.push(Subject::sha256(
                &format!("{name}:{}", l.id),
                l.sha256.as_deref().unwrap_or_default(),
            ));
        }
        subject.push(Subject::sha256(
            &format!("ledger_head:{}", ledger_head.id),
            ledger_head.sha256.as_deref().unwrap_or_default(),
        ));
        let mut predicate = json!({"run_id": run_id, "agent_id": p.agent_id, "loop_type": p.loop_type, "path": p.path, "state": p.state, "credits": p.credits, "attested_at": now_rfc3339()});
        // An x402-paid run: the payment (network, transaction, payer) is signed with the work.
        // Only such a run's receipt carries one, so only then is it read.
        let paid_by_x402 =
            run_contract(&ctx.store, &input, &rec).await?.provider == tokenops::x402::X402;
        if let Some(l) = p.first_link("settlement_receipt").filter(|_| paid_by_x402) {
            if let Some(item) = ctx.store.get(&tokenops::store::Key::object(&l.id)).await? {
                let receipt: tokenops::model::SettlementReceipt = item.decode()?;
                if let Some(payment) = receipt.payment {
                    predicate["payment"] = json!(payment);
                }
            }
        }
        let statement = Statement::new(subject, PREDICATE_TYPE, predicate);
        let envelope = sign_statement(&statement, signer)
            .await
            .map_err(sign_failure)?;
        let att = Attestation {
            object_type: "attestation".into(),
            attestation_id: run_object_id("att", &run_id),
            run_id: run_id.clone(),
            keyid: signer.key_id(),
            envelope,
            statement,
            created_at: now_rfc3339(),
        };
        let mut payload = p.clone();
        payload.attested = true;
        payload.link(
            STAGE,
            &att.attestation_id,
            "attestation",
            ctx.config
                .url(&format!("/attestations/{}", att.attestation_id)),
            tokenops::proof::jcs::digest(&att.envelope).ok(),
        );
        let writes = vec![
            Write::put(object_item(
                &att.attestation_id,
                "attestation",
                &p.agent_id,
                Some(&run_id),
                &att,
            )?),
            rec.save(payload)?,
        ];
        match ctx.store.transact(writes).await {
            Ok(()) => {
                return Ok(TaskOutput {
                    run_id,
                    stage: STAGE.into(),
                    object_id: att.attestation_id,
                    state: p.state,
                    evidence_status: None,
                })
            }
            Err(StoreError::ConditionFailed) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(TaskError::StoreUnavailable("run contention".into()))
}
