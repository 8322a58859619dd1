//! Callback delivery (stage 12 and the redeliver route): the payload is signed per Standard
//! Webhooks with the agent's callback secret, POSTed with retries and backoff, and every attempt
//! is recorded on the callback record.

use std::time::{Duration, Instant};

use crate::config::Ctx;
use crate::error::StoreError;
use crate::ids::{now, now_rfc3339, run_object_id};
use crate::model::{CallbackAttempt, CallbackPayload, CallbackRecord, FullLoopPayload};
use crate::ports::CallbackSender;
use crate::proof::{jcs, webhook};
use crate::rules;
use crate::store::{Item, Key, Store, Write};

pub fn callback_id(run_id: &str) -> String {
    run_object_id("cb", run_id)
}

/// The payload agents receive: run id, state, next action, result package URL, receipts.
pub fn payload<S>(ctx: &Ctx<S>, run: &FullLoopPayload) -> CallbackPayload {
    let mut receipts = std::collections::BTreeMap::new();
    for stage in ["settlement_receipt", "usage_receipt", "result_contract"] {
        if let Some(id) = run.first_id(stage) {
            receipts.insert(
                stage.to_string(),
                ctx.config.url(&format!(
                    "/{}/{id}",
                    if stage == "result_contract" {
                        "results"
                    } else {
                        "receipts"
                    }
                )),
            );
        }
    }
    CallbackPayload {
        event_type: "tokenops.run.completed".into(),
        run_id: run.run_id.clone(),
        state: "callback_delivered".into(),
        next_action: "ready_for_downstream_agent".into(),
        result_package_url: run
            .first_id("tokenops_execution")
            .map(|id| ctx.config.url(&format!("/results/{id}")))
            .unwrap_or_default(),
        receipts,
    }
}

/// The agent's callback signing secret (kept so we can sign; the access key is kept only as a hash).
pub async fn agent_secret<S: Store>(store: &S, agent_id: &str) -> Result<String, StoreError> {
    let item = store
        .get(&Key::agent(agent_id))
        .await?
        .ok_or_else(|| StoreError::Corrupt {
            key: agent_id.into(),
            reason: "agent missing".into(),
        })?;
    item.get_attr("callback_secret")
        .map(str::to_string)
        .ok_or_else(|| StoreError::Corrupt {
            key: agent_id.into(),
            reason: "no callback secret (credentials not claimed)".into(),
        })
}

/// Tries to deliver `record.payload`, appending one attempt per try. Failed attempts are written
/// as they happen so the trail survives a crash; the caller writes the final record.
pub async fn deliver<S: Store, C: CallbackSender>(
    ctx: &Ctx<S>,
    sender: &C,
    record: &mut CallbackRecord,
    secret: &str,
    owner: &str,
) -> Result<bool, StoreError> {
    let body = serde_json::to_vec(&record.payload).map_err(|e| StoreError::Corrupt {
        key: record.callback_id.clone(),
        reason: e.to_string(),
    })?;
    let policy = ctx.config.callback_retry.clone();
    let mut delay = Duration::from_millis(policy.base_delay_ms);
    for i in 0..policy.attempts.max(1) {
        let started = Instant::now();
        let outcome = attempt(ctx, sender, record, secret, &body).await;
        let (status_code, error) = match outcome {
            Ok(code) if (200..300).contains(&code) => (Some(code), None),
            Ok(code) => (Some(code), Some(format!("HTTP {code}"))),
            Err(e) => (None, Some(e)),
        };
        let n = record.attempts.len() as u32 + 1;
        record.attempts.push(CallbackAttempt {
            attempt: n,
            at: now_rfc3339(),
            status_code,
            error: error.clone(),
            duration_ms: started.elapsed().as_millis() as u64,
        });
        record.updated_at = now_rfc3339();
        if error.is_none() {
            record.status = "delivered".into();
            return Ok(true);
        }
        record.status = "retrying".into();
        tracing::warn!(run_id = %record.run_id, attempt = n, error = error.as_deref().unwrap_or(""), "callback attempt failed");
        ctx.store
            .transact(vec![Write::put(record_item(record, owner)?)])
            .await?;
        if i + 1 < policy.attempts {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
    record.status = "failed".into();
    Ok(false)
}

async fn attempt<S, C: CallbackSender>(
    ctx: &Ctx<S>,
    sender: &C,
    record: &CallbackRecord,
    secret: &str,
    body: &[u8],
) -> Result<u16, String> {
    let url = rules::check_callback_url(
        &record.url,
        ctx.config.allow_loopback_callbacks,
        "callback_url",
    )
    .map_err(|e| e.detail)?;
    let pinned = rules::resolve_allowed(&url, ctx.config.allow_loopback_callbacks).await?;
    let ts = now().unix_timestamp();
    let sig = webhook::sign(secret, &record.webhook_id, ts, body).map_err(|e| e.to_string())?;
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        (webhook::HEADER_ID.to_string(), record.webhook_id.clone()),
        (webhook::HEADER_TIMESTAMP.to_string(), ts.to_string()),
        (webhook::HEADER_SIGNATURE.to_string(), sig),
    ];
    sender
        .post(url.as_str(), &pinned, headers, body.to_vec())
        .await
}

pub fn new_record<S>(
    ctx: &Ctx<S>,
    run: &FullLoopPayload,
    url: &str,
) -> Result<CallbackRecord, StoreError> {
    let payload = payload(ctx, run);
    let payload_digest = jcs::digest(&payload).map_err(|e| StoreError::Corrupt {
        key: run.run_id.clone(),
        reason: e.to_string(),
    })?;
    Ok(CallbackRecord {
        object_type: "callback_delivery".into(),
        callback_id: callback_id(&run.run_id),
        run_id: run.run_id.clone(),
        url: url.into(),
        // Stable per run: receivers dedupe redeliveries by webhook-id.
        webhook_id: format!("msg_{}", crate::ids::suffix(&run.run_id)),
        payload,
        payload_digest,
        status: "pending".into(),
        attempts: vec![],
        updated_at: now_rfc3339(),
    })
}

pub fn record_item(record: &CallbackRecord, owner: &str) -> Result<Item, StoreError> {
    crate::api::object_item(
        &record.callback_id,
        "callback_delivery",
        owner,
        Some(&record.run_id),
        record,
    )
}
