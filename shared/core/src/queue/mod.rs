//! Adapters of the [`RunQueue`](crate::ports::RunQueue) port: [`StoreQueue`] (SQS semantics on the
//! table itself; the embedded default) and `tokenops_aws::SqsQueue` (Amazon SQS; AWS and emulators).
//!
//! Both planes also keep a *pending index* in the table (`PENDING` / `<execution name>`, written
//! with the run or replay and deleted when the queue stage dispatches it): SQS has no "age of the
//! oldest message" attribute, so `GET /queue` reads it from there.

mod store;

pub use store::{QueueOps, StoreQueue};

use crate::model::RunMessage;
use crate::store::{Item, Key, Write};

fn pending_key(execution_name: &str) -> Key {
    Key::new("PENDING", execution_name)
}

/// The write that records a message as waiting for dispatch (in the enqueuing stage's transaction).
pub fn pending_write(msg: &RunMessage) -> Write {
    let name = msg.execution_name();
    let now_ms = (crate::ids::now().unix_timestamp_nanos() / 1_000_000) as i64;
    let item = Item::new(
        pending_key(&name),
        "pending_run",
        None,
        serde_json::json!({"run_id": msg.run_id, "replay": msg.replay}),
    )
    .num("queued_at_ms", now_ms);
    Write::put(item)
}

/// The write that clears it (in the queue stage's dispatch).
pub fn dispatched_write(msg: &RunMessage) -> Write {
    Write::Delete {
        key: pending_key(&msg.execution_name()),
        conds: vec![],
    }
}

/// Age in seconds of the oldest message still waiting for dispatch (0 when none).
pub async fn oldest_pending_age_secs<S: crate::store::Store>(
    store: &S,
) -> Result<i64, crate::error::StoreError> {
    let now_ms = (crate::ids::now().unix_timestamp_nanos() / 1_000_000) as i64;
    let oldest = store
        .query("PENDING", "run_", None)
        .await?
        .iter()
        .map(|i| i.get_num("queued_at_ms"))
        .min();
    Ok(oldest.map(|t| ((now_ms - t) / 1000).max(0)).unwrap_or(0))
}

/// One agent's runs waiting for dispatch: how many, and the age in seconds of the oldest (0 when
/// none). The pending index carries no owner, so each entry's run is read and kept only if
/// `agent` owns it (a run and its replays share one read).
pub async fn pending_for_agent<S: crate::store::Store>(
    store: &S,
    agent: &str,
) -> Result<(i64, i64), crate::error::StoreError> {
    let now_ms = (crate::ids::now().unix_timestamp_nanos() / 1_000_000) as i64;
    let mut owners: std::collections::BTreeMap<String, bool> = Default::default();
    let (mut count, mut oldest) = (0i64, None::<i64>);
    for item in store.query("PENDING", "run_", None).await? {
        let Some(run_id) = item.doc.get("run_id").and_then(|r| r.as_str()) else {
            continue;
        };
        let mine = match owners.get(run_id) {
            Some(m) => *m,
            None => {
                let m = store
                    .get(&crate::store::Key::run(run_id))
                    .await?
                    .is_some_and(|r| r.owner.as_deref() == Some(agent));
                owners.insert(run_id.to_string(), m);
                m
            }
        };
        if mine {
            count += 1;
            let t = item.get_num("queued_at_ms");
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
    }
    Ok((
        count,
        oldest.map(|t| ((now_ms - t) / 1000).max(0)).unwrap_or(0),
    ))
}
