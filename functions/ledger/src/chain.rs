//! Appending to an agent's chain without a losing transaction.
//!
//! Every run of an agent appends to one chain, so its head is a hot item. Racing for it with a
//! conditional transaction (the first shape) made each loser pay for a failed transaction of
//! every entry, and retry. Here the head carries a **lease**: whoever takes it (one small
//! conditional put) chains and seals its entries in one transaction that also frees the lease.
//! A run that finds the lease taken writes its entries as a pending page and waits; the first
//! of the waiting runs to get the lease seals every pending page in one transaction — a group
//! commit — and the others find their page sealed.
//!
//! Items (`LEDGER#<agent>` partition):
//! - `HEAD`: the last entry (`null` before the first), numbers `seq` and `lease_until` (epoch ms;
//!   0 = free), attribute `holder` (the lease's token).
//! - `P#<page>`: a pending page — one append's entries, not yet chained.
//! - `E#<first seq:020>`: a sealed block, one append's entries, chained (the chain is the
//!   blocks in key order).
//! - `S#<page>`: the seal of a page (its block's first seq and last entry). A page is sealed at
//!   most once: the seal is created under `attribute_not_exists`, in the sealing transaction.
//!
//! A lease that lapses (a sealer crashed) is taken over after [`LEASE_MS`]; the crashed
//! sealer's transaction, if it ever lands, fails on `holder`, so nothing is sealed twice.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokenops::backoff::Backoff;
use tokenops::error::StoreError;
use tokenops::ids::{now_ms, now_rfc3339};
use tokenops::proof::ledger::{link, EntryDraft, LedgerEntry};
use tokenops::store::{Cond, Item, Key, Store, Write};

/// How long a sealer may hold the head before others take it over: the ledger function's
/// timeout (`infra/template.yaml`, 15 s), so a lease cannot lapse while its holder still runs.
pub const LEASE_MS: i64 = 15_000;
/// Pages sealed per transaction (each page is 3 items; DynamoDB allows 100 per transaction).
const PAGES_PER_SEAL: usize = 30;
/// Between looks at a busy chain: a seal takes a few milliseconds locally, tens in AWS.
const WAIT: Backoff = Backoff {
    initial_secs: 0.01,
    factor: 2.0,
    cap_secs: 0.1,
    retries: u32::MAX,
    full_jitter: true,
};
/// How long an append waits for the chain before it reports the store busy: inside the
/// function's timeout, so the state machine sees a retryable error, not a timed-out task.
const APPEND_BUDGET: Duration = Duration::from_secs(10);

/// One entry to append: what it records, the object's id and digest, and credits moved (if any).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NewEntry {
    pub entry_type: String,
    pub object_id: String,
    pub object_digest: String,
    pub credits: Option<i64>,
}

/// One append: its id (unique per append, stable across retries), its run and its entries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Page {
    pub page: String,
    pub run_id: String,
    pub entries: Vec<NewEntry>,
}

/// What a page became.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Seal {
    page: String,
    run_id: String,
    first_seq: u64,
    last: LedgerEntry,
}

/// How an append ended: the page's last entry, and whether the caller's writes went with it.
pub struct Appended {
    pub last: LedgerEntry,
    /// The caller's `with` writes were part of the sealing transaction (else: write them now).
    pub with_applied: bool,
}

fn partition(agent: &str) -> String {
    format!("LEDGER#{agent}")
}
fn head_key(agent: &str) -> Key {
    Key::new(partition(agent), "HEAD")
}
fn page_key(agent: &str, page: &str) -> Key {
    Key::new(partition(agent), format!("P#{page}"))
}
fn seal_key(agent: &str, page: &str) -> Key {
    Key::new(partition(agent), format!("S#{page}"))
}

/// The chain, entry by entry, in order (blocks flattened; a single-entry item of the first shape
/// reads as itself).
pub async fn entries<S: Store>(store: &S, agent: &str) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut out = Vec::new();
    for item in store.query(&partition(agent), "E#", None).await? {
        if item.kind == "ledger_block" {
            out.extend(item.decode::<Vec<LedgerEntry>>()?);
        } else {
            out.push(item.decode()?);
        }
    }
    Ok(out)
}

/// The head as read: the last entry, its seq, and the lease on it.
struct Head {
    last: Option<LedgerEntry>,
    seq: i64,
    lease_until: i64,
    holder: String,
    exists: bool,
}

async fn read_head<S: Store>(store: &S, agent: &str) -> Result<Head, StoreError> {
    Ok(match store.get(&head_key(agent)).await? {
        Some(item) => Head {
            last: item.decode()?,
            seq: item.get_num("seq"),
            lease_until: item.get_num("lease_until"),
            holder: item.get_attr("holder").unwrap_or_default().to_string(),
            exists: true,
        },
        None => Head {
            last: None,
            seq: 0,
            lease_until: 0,
            holder: String::new(),
            exists: false,
        },
    })
}

fn head_item(
    agent: &str,
    last: Option<&LedgerEntry>,
    seq: i64,
    lease_until: i64,
    holder: &str,
) -> Result<Item, StoreError> {
    Ok(
        Item::of(head_key(agent), "ledger_head", Some(agent), &last)?
            .num("seq", seq)
            .num("lease_until", lease_until)
            .attr("holder", holder),
    )
}

/// Appends `page` to `agent`'s chain exactly once, however often it is called (a retried task
/// calls it again and gets the same last entry). `with` derives writes from the page's last
/// entry (the run's link); they go into the sealing transaction when this call seals its own
/// page, which [`Appended::with_applied`] says — else the caller writes them itself. An error is
/// retryable and means "maybe appended" (the page may be sealed later): calling again with the
/// same page is always safe.
pub async fn append<S: Store>(
    store: &S,
    agent: &str,
    page: &Page,
    with: impl Fn(&LedgerEntry) -> Result<Vec<Write>, StoreError>,
) -> Result<Appended, StoreError> {
    if page.entries.is_empty() {
        return Err(StoreError::Corrupt {
            key: page.page.clone(),
            reason: "nothing to ledger".into(),
        });
    }
    let started = Instant::now();
    let mut page_written = false;
    // Seal our entries straight from memory, with the caller's writes, while we may: after a
    // failed sealing transaction (the caller's writes no longer hold, say) the entries go
    // through a page and the caller writes its own writes.
    let mut direct = true;
    // The token of a lease put that was refused, to recognize it on the head if it landed.
    let mut tried: Option<String> = None;
    for attempt in 0u32.. {
        // A retried append (or a waiting one) may already be sealed. The first look skips this
        // read: sealing the page directly creates its seal under `attribute_not_exists`, so a
        // page sealed before fails that transaction and the next round finds the seal.
        if attempt > 0 {
            if let Some(seal) = store.get(&seal_key(agent, &page.page)).await? {
                let seal: Seal = seal.decode()?;
                return Ok(Appended {
                    last: seal.last,
                    with_applied: false,
                });
            }
            if started.elapsed() > APPEND_BUDGET {
                return Err(StoreError::Unavailable(
                    "the ledger stayed busy; the append will be retried".into(),
                ));
            }
        }
        if !direct && !page_written {
            write_page(store, agent, page).await?;
            page_written = true;
        }
        let head = read_head(store, agent).await?;
        let now = now_ms();
        // Ours: a put we took for lost (its answer lost, the SDK's retry refused) had landed.
        let ours = tried
            .take()
            .filter(|t| *t == head.holder && head.lease_until > now);
        let token = match ours {
            Some(t) => Some(t),
            None if head.lease_until <= now => {
                let t = tokenops::ids::random_token("lease");
                match take_lease(store, agent, &head, now, &t).await {
                    Ok(true) => Some(t),
                    // Another append took the lease between our read and our put.
                    Ok(false) => {
                        tried = Some(t);
                        None
                    }
                    Err(e) => {
                        release(store, agent, &head, &t).await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        if let Some(token) = token {
            let own = (!page_written).then_some(page);
            match seal(store, agent, &head, &token, own, &with).await {
                Ok(Some(last)) => {
                    return Ok(Appended {
                        last,
                        with_applied: true,
                    })
                }
                // Our page was among the pending ones: the next round reads its seal.
                Ok(None) => continue,
                Err(StoreError::ConditionFailed) => {
                    clear_strays(store, agent, &head, &token).await?;
                    direct = false;
                    continue;
                }
                // Nobody waits out the lease for an error of ours.
                Err(e) => {
                    release(store, agent, &head, &token).await;
                    return Err(e);
                }
            }
        }
        if !page_written {
            // The lease holder seals what it finds pending: leave our entries for it.
            write_page(store, agent, page).await?;
            page_written = true;
            continue;
        }
        tokio::time::sleep(WAIT.delay(attempt)).await;
    }
    unreachable!("the append loop only ends by returning")
}

/// Puts a lease with `token` on the head, if nobody took it since `head` was read.
async fn take_lease<S: Store>(
    store: &S,
    agent: &str,
    head: &Head,
    now: i64,
    token: &str,
) -> Result<bool, StoreError> {
    let take = Write::put_if(
        head_item(agent, head.last.as_ref(), head.seq, now + LEASE_MS, token)?,
        if head.exists {
            vec![
                Cond::NumEq("seq".into(), head.seq),
                Cond::NumAbsentOrAtMost("lease_until".into(), now),
            ]
        } else {
            vec![Cond::NotExists]
        },
    );
    match store.transact(vec![take]).await {
        Ok(()) => Ok(true),
        Err(StoreError::ConditionFailed) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Frees the lease if `token` still holds it and the head did not move (best effort: if this
/// fails too, the lease lapses after [`LEASE_MS`]).
async fn release<S: Store>(store: &S, agent: &str, head: &Head, token: &str) {
    let freed = match head_item(agent, head.last.as_ref(), head.seq, 0, "") {
        Ok(item) => {
            store
                .transact(vec![Write::put_if(
                    item,
                    vec![
                        Cond::AttrEq("holder".into(), token.into()),
                        Cond::NumEq("seq".into(), head.seq),
                    ],
                )])
                .await
        }
        Err(e) => Err(e),
    };
    match freed {
        Ok(()) | Err(StoreError::ConditionFailed) => {}
        Err(e) => tracing::warn!(agent, error = %e, "ledger lease not freed; it lapses"),
    }
}

/// Leaves `page` pending (once: a page already there is the same append's).
async fn write_page<S: Store>(store: &S, agent: &str, page: &Page) -> Result<(), StoreError> {
    let item = Item::of(
        page_key(agent, &page.page),
        "ledger_page",
        Some(agent),
        page,
    )?;
    match store.transact(vec![Write::create(item)]).await {
        Ok(()) | Err(StoreError::ConditionFailed) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Under the lease: chains `own` (when given) and the pending pages, writes their blocks and
/// seals, deletes the pages, moves the head and frees the lease — one transaction. Returns
/// `own`'s last entry when `own` was sealed with the caller's writes.
async fn seal<S: Store>(
    store: &S,
    agent: &str,
    head: &Head,
    token: &str,
    own: Option<&Page>,
    with: &impl Fn(&LedgerEntry) -> Result<Vec<Write>, StoreError>,
) -> Result<Option<LedgerEntry>, StoreError> {
    // An append that never waited seals just its own entries (no query: the uncontended path
    // stays one read, one lease and one transaction); one that left a page seals every pending
    // page. Each page's writer keeps trying until its page is sealed, so none is left behind.
    let pending: Vec<Page> = match own {
        Some(_) => Vec::new(),
        None => pending_pages(store, agent).await?,
    };
    let mut prev = head.last.clone();
    let mut writes = Vec::new();
    let mut own_last = None;
    for (page, is_own) in pending
        .iter()
        .map(|p| (p, false))
        .chain(own.map(|p| (p, true)))
    {
        let block = chain(agent, &mut prev, page)?;
        let (first, last) = (block[0].seq, block[block.len() - 1].clone());
        writes.push(Write::create(Item::of(
            Key::new(partition(agent), format!("E#{first:020}")),
            "ledger_block",
            Some(agent),
            &block,
        )?));
        writes.push(Write::create(Item::of(
            seal_key(agent, &page.page),
            "ledger_seal",
            Some(agent),
            &Seal {
                page: page.page.clone(),
                run_id: page.run_id.clone(),
                first_seq: first,
                last: last.clone(),
            },
        )?));
        if is_own {
            own_last = Some(last);
        } else {
            writes.push(Write::Delete {
                key: page_key(agent, &page.page),
                conds: vec![],
            });
        }
    }
    let seq = prev.as_ref().map(|e| e.seq as i64).unwrap_or(0);
    writes.push(Write::put_if(
        head_item(agent, prev.as_ref(), seq, 0, "")?,
        vec![
            Cond::AttrEq("holder".into(), token.into()),
            Cond::NumEq("seq".into(), head.seq),
        ],
    ));
    if let Some(last) = &own_last {
        writes.extend(with(last)?);
    }
    store.transact(writes).await?;
    if !pending.is_empty() {
        tracing::info!(
            agent,
            pages = pending.len(),
            head_seq = seq,
            "ledger pages sealed"
        );
    }
    Ok(own_last)
}

/// Pending pages, as many as one transaction seals (in page-id order: run ids are ULIDs, so the
/// oldest runs first).
async fn pending_pages<S: Store>(store: &S, agent: &str) -> Result<Vec<Page>, StoreError> {
    store
        .query(&partition(agent), "P#", Some(PAGES_PER_SEAL))
        .await?
        .iter()
        .map(|i| i.decode())
        .collect()
}

/// Chains one page's entries after `prev`.
fn chain(
    agent: &str,
    prev: &mut Option<LedgerEntry>,
    page: &Page,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let recorded_at = now_rfc3339();
    let mut block = Vec::with_capacity(page.entries.len());
    for n in &page.entries {
        let seq = prev.as_ref().map(|e| e.seq + 1).unwrap_or(1);
        let draft = EntryDraft {
            entry_id: format!("ledger_{}_{seq}", tokenops::ids::suffix(agent)),
            chain_id: agent.to_string(),
            run_id: page.run_id.clone(),
            entry_type: n.entry_type.clone(),
            object_id: n.object_id.clone(),
            object_digest: n.object_digest.clone(),
            credits: n.credits,
            recorded_at: recorded_at.clone(),
        };
        let e = link(prev.as_ref(), draft).map_err(|e| StoreError::Corrupt {
            key: format!("ledger of {agent}"),
            reason: e.to_string(),
        })?;
        block.push(e.clone());
        *prev = Some(e);
    }
    Ok(block)
}

/// A sealing transaction failed: the lease was lost (it lapsed and was taken over), the caller's
/// own writes no longer hold, or a page was written again after it was sealed (a retried task
/// racing a sealer). Pages with a seal are deleted so they cannot block the next sealer; then
/// the lease, if still ours, is freed.
async fn clear_strays<S: Store>(
    store: &S,
    agent: &str,
    head: &Head,
    token: &str,
) -> Result<(), StoreError> {
    let cleared = async {
        for p in pending_pages(store, agent).await? {
            if store.get(&seal_key(agent, &p.page)).await?.is_some() {
                tracing::warn!(agent, page = %p.page, "a sealed page was pending again; removed");
                store
                    .transact(vec![Write::Delete {
                        key: page_key(agent, &p.page),
                        conds: vec![],
                    }])
                    .await?;
            }
        }
        Ok(())
    }
    .await;
    release(store, agent, head, token).await;
    cleared
}
