//! State lives in one DynamoDB table (single-table design). Every access is by key, so the table
//! needs **no GSI**: ids are opaque and carry their item's partition, and each listing the API
//! offers (an agent's ledger, a run's queue, an entitlement's transfers) is one partition.
//!
//! | item | pk | sk | notes |
//! |---|---|---|---|
//! | agent (onboarding record + trust profile) | `AGENT#<agent_id>` | `AGENT` | `claim_hash`, `claimed` attrs |
//! | access key | `KEY#<sha256(key)>` | `KEY` | owner = agent; the key itself is never stored |
//! | loop object (quote, route, confirmation, result package, receipts, …) | `OBJ#<id>` | `OBJ` | owner, `run_id` attrs; `doc` = the object JSON |
//! | credit entitlement | `OBJ#<cred_id>` | `OBJ` | numbers `funded`, `available`, `held`, `captured`, `released` |
//! | transfer (double entry) | `XFER#<cred_id>` | `<transfer_id>` | created with `attribute_not_exists`: a movement happens once |
//! | hold | `HOLD#<run_id>` | `HOLD` | `status` held → captured \| released (conditional: at most one) |
//! | run (the full loop payload) | `RUN#<run_id>` | `RUN` | `state` attr, `version` number (optimistic lock) |
//! | ledger head / blocks / pages / seals | `LEDGER#<agent_id>` | `HEAD` / `E#<first seq:020>` / `P#<page>` / `S#<page>` | head: last entry, `seq`, lease (`lease_until`, `holder`); a block chains one append's entries; see `functions/ledger/src/chain.rs` |
//! | idempotency record | `IDEM#<agent or ip>#<key>` | `IDEM` | request hash + stored response; TTL |
//! | queue message (local queue) | `QUEUE#<queue>` | `MSG#<ulid>` | `visible_at`, `receives` numbers, `receipt` attr |
//! | execution (local orchestrator) | `EXEC` | `EXEC#<name>` | `status` attr; `doc` = the ASL execution state |
//!
//! Every item's JSON is its `doc` (S); a doc over 1 KB is stored deflated as `docz` (B) instead
//! (`tokenops_aws::dynamodb`: writes are billed per KB, and the loop's JSON deflates about 3x).
//! Conditions never look inside a doc: they use the item's own attributes and numbers.
//!
//! Conditional: agent/object/transfer creation (`attribute_not_exists`), run updates (`version`),
//! entitlement debits (`available >= amount`), hold settlement (`status = held`), the ledger lease
//! (`lease_until <= now`, then `holder = token` and `seq = expected` when sealing), credential claim
//! (`claimed = false`). Transactional: every stage writes its
//! object, the run update and any money movement in one `TransactWriteItems`, so a stage either
//! happened or did not.

mod item;

pub use item::{Cond, Item, Key, Write};

use crate::error::StoreError;

/// The storage port: read by key, list a partition, write atomically.
pub trait Store: Send + Sync + Clone + 'static {
    fn get(
        &self,
        key: &Key,
    ) -> impl std::future::Future<Output = Result<Option<Item>, StoreError>> + Send;
    /// Items of one partition whose sort key starts with `sk_prefix`, in sort-key order.
    fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        limit: Option<usize>,
    ) -> impl std::future::Future<Output = Result<Vec<Item>, StoreError>> + Send;
    /// All writes happen or none does; any failed condition → [`StoreError::ConditionFailed`].
    fn transact(
        &self,
        writes: Vec<Write>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
    /// Requests sent so far, by kind (the bench prints them per run and prices them).
    fn requests(&self) -> RequestCounts;
}

/// Requests a store has sent, by what DynamoDB bills them as: `GetItem`/`Query` (reads), single
/// `PutItem`/`UpdateItem`/`DeleteItem` (writes), `TransactWriteItems`, and table administration;
/// and the capacity units they consume by item size (on-demand is billed in these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    pub reads: u64,
    pub writes: u64,
    pub transactions: u64,
    pub transaction_items: u64,
    pub other: u64,
    /// Strongly consistent reads: one unit per 4 KB read (at least one per request).
    pub read_units: u64,
    /// One unit per KB written, per item; twice that inside a transaction.
    pub write_units: u64,
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.reads + self.writes + self.transactions + self.other
    }
    /// What was sent between `earlier` and `self`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            reads: self.reads - earlier.reads,
            writes: self.writes - earlier.writes,
            transactions: self.transactions - earlier.transactions,
            transaction_items: self.transaction_items - earlier.transaction_items,
            other: self.other - earlier.other,
            read_units: self.read_units - earlier.read_units,
            write_units: self.write_units - earlier.write_units,
        }
    }
}
