//! The table-backed run queue (embedded default): SQS semantics on the table itself, so it survives a restart of the local
//! runtime and needs no second store. At-least-once delivery; a received message is invisible for
//! the visibility timeout, then redelivered; after `max_receives` receives it moves to the
//! dead-letter queue. The SQS adapter (AWS plane) implements the same port.

use crate::error::StoreError;
use crate::ids::now_ms;
use crate::model::RunMessage;
use crate::ports::{Delivery, QueueStats, RunQueue};
use crate::store::{Cond, Item, Key, Store, Write};

#[derive(Clone)]
pub struct StoreQueue<S> {
    store: S,
    name: String,
    visibility_ms: i64,
    max_receives: i64,
    /// The SQS requests this queue stands in for (the bench prices them).
    ops: std::sync::Arc<QueueOpCounters>,
}

#[derive(Default)]
pub struct QueueOpCounters {
    sends: std::sync::atomic::AtomicU64,
    receives: std::sync::atomic::AtomicU64,
    deletes: std::sync::atomic::AtomicU64,
}

/// SQS requests made through the queue: `SendMessage`, `ReceiveMessage` that returned messages
/// (idle polls are the consumer's, not a run's), `DeleteMessage`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueOps {
    pub sends: u64,
    pub receives: u64,
    pub deletes: u64,
}

impl QueueOps {
    pub fn total(&self) -> u64 {
        self.sends + self.receives + self.deletes
    }
    /// What was sent between `earlier` and `self`.
    pub fn since(&self, earlier: &QueueOps) -> QueueOps {
        QueueOps {
            sends: self.sends - earlier.sends,
            receives: self.receives - earlier.receives,
            deletes: self.deletes - earlier.deletes,
        }
    }
}

impl<S: Store> StoreQueue<S> {
    pub fn new(store: S, name: &str, visibility_secs: i64, max_receives: i64) -> Self {
        StoreQueue {
            store,
            name: name.into(),
            visibility_ms: visibility_secs * 1000,
            max_receives,
            ops: Default::default(),
        }
    }
    pub fn ops(&self) -> QueueOps {
        use std::sync::atomic::Ordering::Relaxed;
        QueueOps {
            sends: self.ops.sends.load(Relaxed),
            receives: self.ops.receives.load(Relaxed),
            deletes: self.ops.deletes.load(Relaxed),
        }
    }
    fn pk(&self) -> String {
        format!("QUEUE#{}", self.name)
    }
    fn dlq_pk(&self) -> String {
        format!("QUEUE#{}-dlq", self.name)
    }
    /// Messages in the dead-letter queue (for the monitor and tests).
    pub async fn dead_letters(&self) -> Result<Vec<RunMessage>, StoreError> {
        self.store
            .query(&self.dlq_pk(), "MSG#", None)
            .await?
            .iter()
            .map(|i| i.decode())
            .collect()
    }
}

impl<S: Store> RunQueue for StoreQueue<S> {
    async fn send(&self, msg: &RunMessage) -> Result<String, StoreError> {
        let id = ulid::Ulid::new().to_string();
        let t = now_ms();
        let item = Item::of(
            Key::new(self.pk(), format!("MSG#{id}")),
            "queue_message",
            None,
            msg,
        )?
        .num("visible_at", t)
        .num("sent_at", t)
        .num("receives", 0)
        .attr("receipt", "-");
        self.store.transact(vec![Write::create(item)]).await?;
        self.ops
            .sends
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(id)
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, StoreError> {
        let t = now_ms();
        let mut out = Vec::new();
        for item in self.store.query(&self.pk(), "MSG#", None).await? {
            if out.len() >= max {
                break;
            }
            let visible_at = item.get_num("visible_at");
            if visible_at > t {
                continue;
            }
            let receives = item.get_num("receives");
            let old_receipt = item.get_attr("receipt").unwrap_or("-").to_string();
            if receives >= self.max_receives {
                // Poison: move to the DLQ (once, conditional on nobody having claimed it meanwhile).
                let mut dead = item.clone();
                dead.key = Key::new(self.dlq_pk(), item.key.sk.clone());
                let moved = self
                    .store
                    .transact(vec![
                        Write::Delete {
                            key: item.key.clone(),
                            conds: vec![Cond::AttrEq("receipt".into(), old_receipt)],
                        },
                        Write::put(dead),
                    ])
                    .await;
                match moved {
                    Ok(()) | Err(StoreError::ConditionFailed) => continue,
                    Err(e) => return Err(e),
                }
            }
            let receipt = ulid::Ulid::new().to_string();
            let claim = Write::Update {
                key: item.key.clone(),
                add: vec![
                    ("receives".into(), 1),
                    ("visible_at".into(), t + self.visibility_ms - visible_at),
                ],
                set_attrs: vec![("receipt".into(), receipt.clone())],
                set_doc: None,
                conds: vec![
                    Cond::NumEq("visible_at".into(), visible_at),
                    Cond::AttrEq("receipt".into(), old_receipt),
                ],
            };
            match self.store.transact(vec![claim]).await {
                Ok(()) => out.push(Delivery {
                    message_id: item.key.sk.trim_start_matches("MSG#").to_string(),
                    receipt,
                    body: item.decode()?,
                    receive_count: receives + 1,
                    sent_at: item.get_num("sent_at"),
                }),
                Err(StoreError::ConditionFailed) => continue, // another consumer claimed it
                Err(e) => return Err(e),
            }
        }
        if !out.is_empty() {
            self.ops
                .receives
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(out)
    }

    async fn ack(&self, d: &Delivery) -> Result<(), StoreError> {
        let w = Write::Delete {
            key: Key::new(self.pk(), format!("MSG#{}", d.message_id)),
            conds: vec![Cond::AttrEq("receipt".into(), d.receipt.clone())],
        };
        self.ops
            .deletes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.store.transact(vec![w]).await {
            // Our receipt expired and someone else holds the message: SQS ignores such deletes too.
            Ok(()) | Err(StoreError::ConditionFailed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let t = now_ms();
        let msgs = self.store.query(&self.pk(), "MSG#", None).await?;
        let dlq = self.store.query(&self.dlq_pk(), "MSG#", None).await?;
        let in_flight = msgs.iter().filter(|m| m.get_num("visible_at") > t).count() as i64;
        let oldest = msgs
            .iter()
            .map(|m| m.get_num("sent_at"))
            .min()
            .map(|s| (t - s) / 1000)
            .unwrap_or(0);
        Ok(QueueStats {
            queue: self.name.clone(),
            depth: msgs.len() as i64 - in_flight,
            in_flight,
            oldest_age_seconds: oldest.max(0),
            dead_letter_depth: dlq.len() as i64,
            max_receives: self.max_receives,
            visibility_timeout_seconds: self.visibility_ms / 1000,
        })
    }
}
