//! The relay: one loop that finishes what a crash or an outage cut short, from the table's
//! outboxes, so nothing waits for a restart or a person.
//!
//! - `PENDING/<execution>` (written with the run or replay, deleted at dispatch): a message older
//!   than the bound is sent again — dispatch is idempotent, so a duplicate costs nothing, while
//!   a send lost after the commit would otherwise strand the run in `queued`.
//! - `PAYREQ/<settlement>` (written with the route, deleted by the funding): the provider is
//!   asked again; once the attempts are spent the request is failed, so every payment request
//!   ends funded or failed.
//! - `FAILING/<execution>` (a failure not fully handled): [`crate::failure::handle`] again.
//!
//! Each has a bound on attempts and logs one line per decision. The local runtime runs
//! [`tick`] every few seconds (and also resumes its stopped executions); in AWS an EventBridge
//! schedule invokes the queue function with a `tokenops.relay` event.

use serde::Serialize;
use tokenops::config::Ctx;
use tokenops::error::StoreError;
use tokenops::ids::now_ms;
use tokenops::model::{ProviderRoute, RunMessage};
use tokenops::ports::{CallbackSender, RunQueue, SettlementProvider};
use tokenops::store::{Cond, Item, Key, Store, Write};

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Re-send a pending message older than this (ms since queued or last re-sent).
    pub resend_after_ms: i64,
    pub max_resends: i64,
    /// Ask the provider again after this long without a confirmation.
    pub payment_after_ms: i64,
    pub max_payment_tries: i64,
    /// Re-run a failure handler that has not finished after this long.
    pub failing_after_ms: i64,
    pub max_failing_tries: i64,
    /// Look at an x402 settlement of unknown outcome again after this long
    /// ([`tokenops::x402::pay::reconcile`]; it ends when the authorization is used or expires).
    pub x402_after_ms: i64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            resend_after_ms: 30_000,
            max_resends: 10,
            payment_after_ms: 30_000,
            max_payment_tries: 10,
            failing_after_ms: 30_000,
            max_failing_tries: 10,
            x402_after_ms: 10_000,
        }
    }
}

/// What one tick did (logged, and returned to the caller for tests and the Lambda response).
#[derive(Serialize, Default, Debug, Clone, PartialEq)]
pub struct RelayReport {
    pub resent: usize,
    pub payments_retried: usize,
    pub payments_failed: usize,
    pub failures_handled: usize,
    pub gave_up: usize,
    pub errors: usize,
}

/// The item again with its retry counters moved on, only if it still exists (the step it waits
/// for may have completed meanwhile; it must not come back).
fn bump(item: &Item) -> Write {
    let mut next = item.clone();
    next = next
        .num("relayed_at_ms", now_ms())
        .num("tries", item.get_num("tries") + 1);
    Write::put_if(next, vec![Cond::Exists])
}

fn due(item: &Item, after_ms: i64) -> bool {
    let last = item
        .get_num("queued_at_ms")
        .max(item.get_num("relayed_at_ms"));
    now_ms() - last >= after_ms
}

pub async fn tick<S, Q, C, P>(
    ctx: &Ctx<S>,
    queue: &Q,
    sender: &C,
    provider: &P,
    cfg: &RelayConfig,
) -> Result<RelayReport, StoreError>
where
    S: Store,
    Q: RunQueue,
    C: CallbackSender,
    P: SettlementProvider,
{
    let mut report = RelayReport::default();
    for item in ctx.store.query("PENDING", "run_", None).await? {
        if !due(&item, cfg.resend_after_ms) {
            continue;
        }
        let msg: RunMessage = match serde_json::from_value(item.doc.clone()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(pending = %item.key.sk, error = %e, "relay: unreadable pending entry left alone");
                report.errors += 1;
                continue;
            }
        };
        let tries = item.get_num("tries");
        if tries >= cfg.max_resends {
            if tries == cfg.max_resends {
                tracing::error!(run_id = %msg.run_id, tries, "relay: gave up re-sending; the run stays visible as pending in GET /queue");
                ctx.store.transact(vec![bump(&item)]).await.ok();
                report.gave_up += 1;
            }
            continue;
        }
        match queue.send(&msg).await {
            Ok(_) => {
                tracing::info!(run_id = %msg.run_id, execution = %item.key.sk, resend = tries + 1, "relay: re-sent a message not dispatched in time");
                report.resent += 1;
                match ctx.store.transact(vec![bump(&item)]).await {
                    Ok(()) | Err(StoreError::ConditionFailed) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => {
                tracing::warn!(run_id = %msg.run_id, error = %e, "relay: re-send failed; next tick");
                report.errors += 1;
            }
        }
    }
    for item in ctx.store.query("PAYREQ", "stl_", None).await? {
        if !due(&item, cfg.payment_after_ms) {
            continue;
        }
        let route: ProviderRoute = match item.decode() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(payment = %item.key.sk, error = %e, "relay: unreadable payment request left alone");
                report.errors += 1;
                continue;
            }
        };
        let tries = item.get_num("tries");
        if tries >= cfg.max_payment_tries {
            fail_payment(ctx, &route).await?;
            tracing::warn!(settlement_id = %route.settlement_id, tries, "relay: payment request never confirmed; failed");
            report.payments_failed += 1;
            continue;
        }
        match ctx.store.transact(vec![bump(&item)]).await {
            Ok(()) => {}
            Err(StoreError::ConditionFailed) => continue, // funded meanwhile
            Err(e) => return Err(e),
        }
        match provider.request_payment(&route).await {
            Ok(()) => {
                tracing::info!(settlement_id = %route.settlement_id, attempt = tries + 1, "relay: asked the provider again for an unconfirmed payment");
                report.payments_retried += 1;
            }
            Err(e) => {
                tracing::warn!(settlement_id = %route.settlement_id, error = %e, "relay: provider not reachable; next tick");
                report.errors += 1;
            }
        }
    }
    for item in ctx.store.query("FAILING", "run_", None).await? {
        if !due(&item, cfg.failing_after_ms) {
            continue;
        }
        let f: crate::failure::FailedExecution = match item.decode() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(failing = %item.key.sk, error = %e, "relay: unreadable failure entry left alone");
                report.errors += 1;
                continue;
            }
        };
        let tries = item.get_num("tries");
        if tries >= cfg.max_failing_tries {
            if tries == cfg.max_failing_tries {
                tracing::error!(execution = %f.execution, tries, "relay: gave up handling a failed execution; see the run");
                ctx.store.transact(vec![bump(&item)]).await.ok();
                report.gave_up += 1;
            }
            continue;
        }
        match ctx.store.transact(vec![bump(&item)]).await {
            Ok(()) => {}
            Err(StoreError::ConditionFailed) => continue, // handled meanwhile
            Err(e) => return Err(e),
        }
        match crate::failure::handle(ctx, sender, &f).await {
            Ok(outcome) => {
                tracing::info!(execution = %f.execution, ?outcome, "relay: finished handling a failed execution");
                report.failures_handled += 1;
            }
            Err(e) => {
                tracing::warn!(execution = %f.execution, error = %e, "relay: failure handler failed; next tick");
                report.errors += 1;
            }
        }
    }
    Ok(report)
}

/// Ends a payment request that was never confirmed: route and entitlement `failed` (only while
/// the entitlement still awaits funding), outbox entry gone.
async fn fail_payment<S: Store>(ctx: &Ctx<S>, route: &ProviderRoute) -> Result<(), StoreError> {
    let mut failed = route.clone();
    failed.status = "failed".into();
    failed.payment_request.status = "failed".into();
    let writes = vec![
        Write::put(tokenops::api::object_item(
            &route.settlement_id,
            "provider_route",
            &route.agent_id,
            None,
            &failed,
        )?),
        Write::Update {
            key: Key::object(&route.credit_entitlement_id),
            add: vec![],
            set_attrs: vec![("status".into(), "failed".into())],
            set_doc: None,
            conds: vec![Cond::AttrEq("status".into(), "awaiting_funding".into())],
        },
        tokenops::provider::payment_settled_write(&route.settlement_id),
    ];
    match ctx.store.transact(writes).await {
        // Funded at the last moment: the funding removed the outbox entry; nothing to fail.
        Ok(()) | Err(StoreError::ConditionFailed) => Ok(()),
        Err(e) => Err(e),
    }
}
