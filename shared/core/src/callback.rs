//! Callback delivery (stage 12 and the redeliver route): the payload is signed per Standard
//! Webhooks with the agent's callback secret, POSTed with retries and backoff, and every attempt
//! is recorded on the callback record.

use std::time::{Duration, Instant};

use crate::config::Ctx;
use crate::error::StoreError;
use crate::ids::{now, now_rfc3339, run_object_id};
use crate::model::{
    CallbackAttempt, CallbackFailure, CallbackPayload, CallbackRecord, FullLoopPayload,
};
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
        failure: None,
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

/// Tries to deliver `record.payload`, at most `callback_retry.attempts` times. The record is
/// written *before* each attempt (status `sending`) and after it (the attempt's outcome), so a
/// crash mid-send is visible and a delivered callback is never sent again by a retried task:
/// the only window for a second delivery (same `webhook-id`) is a crash during the HTTP request.
pub async fn deliver<S: Store, C: CallbackSender>(
    ctx: &Ctx<S>,
    sender: &C,
    record: &mut CallbackRecord,
    secret: &str,
    owner: &str,
) -> Result<bool, StoreError> {
    if record.status == "delivered" {
        return Ok(true);
    }
    let body = serde_json::to_vec(&record.payload).map_err(|e| StoreError::Corrupt {
        key: record.callback_id.clone(),
        reason: e.to_string(),
    })?;
    let policy = ctx.config.callback_retry.clone();
    let mut delay = Duration::from_millis(policy.base_delay_ms);
    for i in 0..policy.attempts.max(1) {
        if record.status == "sending" {
            // A previous attempt was cut off (crash): its outcome is unknown, so send again.
            tracing::warn!(run_id = %record.run_id, "callback attempt interrupted earlier; sending again");
        }
        record.status = "sending".into();
        record.updated_at = now_rfc3339();
        persist(ctx, record, owner).await?;
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
        let last = i + 1 >= policy.attempts.max(1);
        record.status = match (&error, last) {
            (None, _) => "delivered",
            (Some(_), false) => "retrying",
            (Some(_), true) => "failed",
        }
        .into();
        persist(ctx, record, owner).await?;
        if error.is_none() {
            return Ok(true);
        }
        tracing::warn!(run_id = %record.run_id, attempt = n, error = error.as_deref().unwrap_or(""), "callback attempt failed");
        if !last {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
    Ok(false)
}

/// Writes the record, retrying a store that is unavailable under the transient rule: losing the
/// write after a delivered attempt would mean sending the callback again.
async fn persist<S: Store>(
    ctx: &Ctx<S>,
    record: &CallbackRecord,
    owner: &str,
) -> Result<(), StoreError> {
    let backoff = ctx.config.transient;
    let mut tries = 0;
    loop {
        match ctx
            .store
            .transact(vec![Write::put(record_item(record, owner)?)])
            .await
        {
            Err(StoreError::Unavailable(e)) if tries < backoff.retries => {
                tracing::warn!(run_id = %record.run_id, error = %e, "callback record not written; retrying");
                tokio::time::sleep(backoff.delay(tries)).await;
                tries += 1;
            }
            other => return other,
        }
    }
}

/// The callback record of a run (created once, then reused by retries and redeliveries).
pub async fn record_for<S: Store>(
    ctx: &Ctx<S>,
    run: &FullLoopPayload,
    url: &str,
) -> Result<CallbackRecord, StoreError> {
    match ctx
        .store
        .get(&Key::object(&callback_id(&run.run_id)))
        .await?
    {
        Some(i) => i.decode(),
        None => new_record(ctx, run, url),
    }
}

/// The `tokenops.run.failed` callback for the run's `n`-th failure: its own record and
/// `webhook-id`, so it never collides with the run's completion callback after a redrive.
pub fn failure_record(
    run: &FullLoopPayload,
    url: &str,
    failure: CallbackFailure,
    n: u32,
) -> Result<CallbackRecord, StoreError> {
    let payload = CallbackPayload {
        event_type: "tokenops.run.failed".into(),
        run_id: run.run_id.clone(),
        state: "failed".into(),
        next_action: "redrive_run".into(),
        result_package_url: String::new(),
        receipts: Default::default(),
        failure: Some(failure),
    };
    let suffix = crate::ids::suffix(&run.run_id);
    record_with(
        run,
        url,
        format!("cbf_{suffix}_{n}"),
        format!("msg_{suffix}_failed_{n}"),
        payload,
    )
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
    record_with(
        run,
        url,
        callback_id(&run.run_id),
        // Stable per run: receivers dedupe redeliveries by webhook-id.
        format!("msg_{}", crate::ids::suffix(&run.run_id)),
        payload(ctx, run),
    )
}

fn record_with(
    run: &FullLoopPayload,
    url: &str,
    callback_id: String,
    webhook_id: String,
    payload: CallbackPayload,
) -> Result<CallbackRecord, StoreError> {
    let payload_digest = jcs::digest(&payload).map_err(|e| StoreError::Corrupt {
        key: run.run_id.clone(),
        reason: e.to_string(),
    })?;
    Ok(CallbackRecord {
        object_type: "callback_delivery".into(),
        callback_id,
        run_id: run.run_id.clone(),
        url: url.into(),
        webhook_id,
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
