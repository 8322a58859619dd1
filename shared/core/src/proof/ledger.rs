//! Append-only, per-agent hash chain of proof objects.
//!
//! Each entry commits to the object it records (`object_digest`) and to its
//! predecessor (`prev_hash`), so rewriting any past entry — say, a credit
//! amount — breaks every later link and is caught by [`verify_chain`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::jcs::{self, JcsError};

/// `prev_hash` of the first entry of every chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// [`BrokenLink::reason`] values.
pub const REASON_ENTRY_HASH: &str = "entry_hash mismatch";
pub const REASON_PREV_HASH: &str = "prev_hash does not match previous entry";
pub const REASON_SEQ_GAP: &str = "seq gap";
pub const REASON_CHAIN_ID: &str = "chain_id differs";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Jcs(#[from] JcsError),
    /// Linking onto another agent's chain would silently fork both chains.
    #[error("draft chain_id {draft:?} does not match previous entry's {prev:?}")]
    ChainMismatch { prev: String, draft: String },
    #[error("sequence number overflow")]
    SeqOverflow,
    #[error("ledger entry did not serialize to a JSON object")]
    NotAnObject,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct LedgerEntry {
    pub entry_id: String,
    /// One chain per agent: the agent id.
    pub chain_id: String,
    /// 1-based and contiguous within a chain.
    pub seq: u64,
    pub run_id: String,
    /// e.g. `run_contract`, `usage_receipt`, `credit_capture`.
    pub entry_type: String,
    pub object_id: String,
    /// SHA-256 hex of the recorded object's canonical JSON.
    pub object_digest: String,
    /// Signed credit movement, when the entry moves money.
    pub credits: Option<i64>,
    /// RFC 3339.
    pub recorded_at: String,
    /// Previous entry's `entry_hash`; [`GENESIS_HASH`] for seq 1.
    pub prev_hash: String,
    /// SHA-256 hex of the JCS of this entry without `entry_hash`.
    pub entry_hash: String,
}

/// What the caller decides; [`link`] fills in the chain position and hashes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct EntryDraft {
    pub entry_id: String,
    pub chain_id: String,
    pub run_id: String,
    pub entry_type: String,
    pub object_id: String,
    pub object_digest: String,
    pub credits: Option<i64>,
    pub recorded_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct ChainReport {
    pub valid: bool,
    pub entries: u64,
    /// Last `entry_hash`, only when the whole chain verified (an unverified head vouches for nothing).
    pub head_hash: Option<String>,
    pub first_broken: Option<BrokenLink>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct BrokenLink {
    pub seq: u64,
    pub entry_id: String,
    /// One of the `REASON_*` constants.
    pub reason: String,
}

/// Appends `draft` after `prev` (or starts a chain when `prev` is `None`).
pub fn link(prev: Option<&LedgerEntry>, draft: EntryDraft) -> Result<LedgerEntry, LedgerError> {
    let (seq, prev_hash) = match prev {
        None => (1, GENESIS_HASH.to_owned()),
        Some(p) if p.chain_id != draft.chain_id => {
            return Err(LedgerError::ChainMismatch {
                prev: p.chain_id.clone(),
                draft: draft.chain_id,
            })
        }
        Some(p) => (
            p.seq.checked_add(1).ok_or(LedgerError::SeqOverflow)?,
            p.entry_hash.clone(),
        ),
    };
    let mut entry = LedgerEntry {
        entry_id: draft.entry_id,
        chain_id: draft.chain_id,
        seq,
        run_id: draft.run_id,
        entry_type: draft.entry_type,
        object_id: draft.object_id,
        object_digest: draft.object_digest,
        credits: draft.credits,
        recorded_at: draft.recorded_at,
        prev_hash,
        entry_hash: String::new(),
    };
    entry.entry_hash = entry_hash(&entry)?;
    Ok(entry)
}

/// Hash over every field but `entry_hash` itself. Going through a JSON object
/// (rather than a hand-kept field list) means a field added later is covered
/// automatically.
pub fn entry_hash(e: &LedgerEntry) -> Result<String, LedgerError> {
    let mut v = serde_json::to_value(e).map_err(JcsError::from)?;
    v.as_object_mut()
        .ok_or(LedgerError::NotAnObject)?
        .remove("entry_hash");
    Ok(jcs::digest(&v)?)
}

/// Verifies a whole chain given in seq order, starting at seq 1, and reports
/// the first broken link. Per entry the checks run: own hash, chain id, seq
/// continuity, then the link to the predecessor.
pub fn verify_chain(entries: &[LedgerEntry]) -> ChainReport {
    let broken = |e: &LedgerEntry, reason: &str| BrokenLink {
        seq: e.seq,
        entry_id: e.entry_id.clone(),
        reason: reason.to_owned(),
    };
    let mut first_broken = None;
    for (i, e) in entries.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| &entries[j]);
        let (want_seq, want_prev) = match prev {
            None => (Some(1), GENESIS_HASH),
            Some(p) => (p.seq.checked_add(1), p.entry_hash.as_str()),
        };
        let reason = if entry_hash(e).ok().as_deref() != Some(e.entry_hash.as_str()) {
            Some(REASON_ENTRY_HASH)
        } else if e.chain_id != entries[0].chain_id {
            Some(REASON_CHAIN_ID)
        } else if Some(e.seq) != want_seq {
            Some(REASON_SEQ_GAP)
        } else if e.prev_hash != want_prev {
            Some(REASON_PREV_HASH)
        } else {
            None
        };
        if let Some(r) = reason {
            first_broken = Some(broken(e, r));
            break;
        }
    }
    let valid = first_broken.is_none();
    ChainReport {
        valid,
        entries: entries.len() as u64,
        head_hash: if valid {
            entries.last().map(|e| e.entry_hash.clone())
        } else {
            None
        },
        first_broken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(n: u64) -> EntryDraft {
        EntryDraft {
            entry_id: format!("ledger_agent-1_{n}"),
            chain_id: "agent-1".into(),
            run_id: format!("run_{n}"),
            entry_type: "usage_receipt".into(),
            object_id: format!("obj_{n}"),
            object_digest: jcs::sha256_hex(format!("object {n}").as_bytes()),
            credits: Some(-(n as i64) * 10),
            recorded_at: format!("2025-01-0{n}T00:00:00Z"),
        }
    }

    fn chain(n: u64) -> Vec<LedgerEntry> {
        let mut out: Vec<LedgerEntry> = Vec::new();
        for i in 1..=n {
            let e = link(out.last(), draft(i)).unwrap();
            out.push(e);
        }
        out
    }

    fn broken_at(entries: &[LedgerEntry]) -> (u64, String) {
        let r = verify_chain(entries);
        assert!(!r.valid);
        assert_eq!(r.head_hash, None);
        let b = r.first_broken.unwrap();
        (b.seq, b.reason)
    }

    #[test]
    fn link_sets_position_and_hashes() {
        let c = chain(2);
        assert_eq!((c[0].seq, c[1].seq), (1, 2));
        assert_eq!(c[0].prev_hash, GENESIS_HASH);
        assert_eq!(c[1].prev_hash, c[0].entry_hash);
        assert_eq!(entry_hash(&c[1]).unwrap(), c[1].entry_hash);
        // entry_hash really excludes itself: changing it does not change the hash.
        let mut e = c[1].clone();
        e.entry_hash = "x".into();
        assert_eq!(entry_hash(&e).unwrap(), c[1].entry_hash);
    }

    #[test]
    fn five_entry_chain_verifies() {
        let c = chain(5);
        let r = verify_chain(&c);
        assert_eq!(
            r,
            ChainReport {
                valid: true,
                entries: 5,
                head_hash: Some(c[4].entry_hash.clone()),
                first_broken: None,
            }
        );
    }

    #[test]
    fn tampered_field_breaks_entry_hash() {
        let mut c = chain(5);
        c[2].credits = Some(1_000_000);
        assert_eq!(broken_at(&c), (3, REASON_ENTRY_HASH.into()));
    }

    #[test]
    fn rehashed_tamper_breaks_next_link() {
        let mut c = chain(5);
        c[2].credits = Some(1_000_000);
        c[2].entry_hash = entry_hash(&c[2]).unwrap();
        assert_eq!(broken_at(&c), (4, REASON_PREV_HASH.into()));
    }

    #[test]
    fn removed_entry_is_a_seq_gap() {
        let mut c = chain(5);
        c.remove(2);
        assert_eq!(broken_at(&c), (4, REASON_SEQ_GAP.into()));
        let mut c = chain(3);
        c.remove(0);
        assert_eq!(broken_at(&c), (2, REASON_SEQ_GAP.into()));
    }

    #[test]
    fn foreign_chain_entry_is_reported() {
        let mut c = chain(3);
        c[1].chain_id = "agent-2".into();
        c[1].entry_hash = entry_hash(&c[1]).unwrap();
        assert_eq!(broken_at(&c), (2, REASON_CHAIN_ID.into()));
        let mut other = draft(4);
        other.chain_id = "agent-2".into();
        assert!(matches!(
            link(chain(1).last(), other),
            Err(LedgerError::ChainMismatch { .. })
        ));
    }

    #[test]
    fn first_entry_must_start_from_genesis() {
        let mut c = chain(2);
        c[0].prev_hash = "ab".repeat(32);
        c[0].entry_hash = entry_hash(&c[0]).unwrap();
        assert_eq!(broken_at(&c), (1, REASON_PREV_HASH.into()));
    }

    #[test]
    fn empty_chain_is_valid() {
        let r = verify_chain(&[]);
        assert!(r.valid);
        assert_eq!((r.entries, r.head_hash, r.first_broken), (0, None, None));
    }

    #[test]
    fn report_serializes_with_reason_text() {
        let mut c = chain(3);
        c[2].recorded_at = "2030-01-01T00:00:00Z".into();
        let v = serde_json::to_value(verify_chain(&c)).unwrap();
        assert_eq!(v["first_broken"]["reason"], "entry_hash mismatch");
        assert_eq!(v["first_broken"]["entry_id"], "ledger_agent-1_3");
    }
}
