//! Money rules. Credits are integers; every movement is a double-entry [`Transfer`] with a
//! deterministic id, written with `attribute_not_exists` in the same transaction as the balance
//! change, so a retried request or a redelivered message can never move money twice.
//!
//! | movement | debit account | credit account | balance change (conditional) |
//! |---|---|---|---|
//! | fund (provider confirmation) | `provider:<p>` | `entitlement:<id>:available` | funded += n, available += n |
//! | hold (run contract) | `entitlement:<id>:available` | `entitlement:<id>:held` | available -= n **if available ≥ n** |
//! | capture (usage receipt) | `entitlement:<id>:held` | `tokenops:revenue` | held -= n, captured += n **if hold is `held`** |
//! | release (cancel) | `entitlement:<id>:held` | `entitlement:<id>:available` | held -= n, available += n **if hold is `held`** |
//!
//! The hold item (`HOLD#<run>`) moves `held` → `captured` | `released` under a condition, so a
//! run's credits are captured at most once and never both captured and released.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::now_rfc3339;
use crate::store::{Cond, Item, Key, Write};

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Transfer {
    pub transfer_id: String,
    pub kind: String,
    pub debit_account: String,
    pub credit_account: String,
    pub credits: i64,
    pub credit_entitlement_id: String,
    #[serde(default)]
    pub run_id: Option<String>,
    pub at: String,
}

pub fn transfer_id(kind: &str, subject: &str) -> String {
    format!("xfer_{kind}_{}", crate::ids::suffix(subject))
}

fn available(ent: &str) -> String {
    format!("entitlement:{ent}:available")
}
fn held(ent: &str) -> String {
    format!("entitlement:{ent}:held")
}
pub const REVENUE_ACCOUNT: &str = "tokenops:revenue";

fn transfer_write(t: &Transfer, owner: &str) -> Write {
    let item = Item::new(
        Key::new(
            format!("XFER#{}", t.credit_entitlement_id),
            t.transfer_id.clone(),
        ),
        "transfer",
        Some(owner),
        serde_json::to_value(t).unwrap_or_default(),
    );
    Write::create(item)
}

fn adjust(ent: &str, add: &[(&str, i64)], conds: Vec<Cond>) -> Write {
    Write::Update {
        key: Key::object(ent),
        add: add.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        set_attrs: vec![],
        set_doc: None,
        conds: [vec![Cond::Exists], conds].concat(),
    }
}

fn transfer(
    kind: &str,
    subject: &str,
    debit: String,
    credit: String,
    credits: i64,
    ent: &str,
    run: Option<&str>,
) -> Transfer {
    Transfer {
        transfer_id: transfer_id(kind, subject),
        kind: kind.into(),
        debit_account: debit,
        credit_account: credit,
        credits,
        credit_entitlement_id: ent.into(),
        run_id: run.map(str::to_string),
        at: now_rfc3339(),
    }
}

/// Funding on a verified provider confirmation; the entitlement flips to `funded` once.
pub fn fund(
    ent: &str,
    owner: &str,
    provider: &str,
    settlement_id: &str,
    credits: i64,
) -> (Transfer, Vec<Write>) {
    let t = transfer(
        "fund",
        settlement_id,
        format!("provider:{provider}"),
        available(ent),
        credits,
        ent,
        None,
    );
    let mut w = adjust(
        ent,
        &[("funded", credits), ("available", credits)],
        vec![Cond::AttrEq("status".into(), "awaiting_funding".into())],
    );
    if let Write::Update { set_attrs, .. } = &mut w {
        set_attrs.push(("status".into(), "funded".into()));
    }
    (t.clone(), vec![transfer_write(&t, owner), w])
}

/// A run's hold; fails its condition when fewer than `credits` are available.
pub fn hold(ent: &str, owner: &str, run_id: &str, credits: i64) -> (Transfer, Vec<Write>) {
    let t = transfer(
        "hold",
        run_id,
        available(ent),
        held(ent),
        credits,
        ent,
        Some(run_id),
    );
    let hold_item = Item::new(
        Key::new(format!("HOLD#{run_id}"), "HOLD"),
        "hold",
        Some(owner),
        serde_json::json!({"run_id": run_id, "credit_entitlement_id": ent, "credits": credits}),
    )
    .attr("status", "held")
    .num("credits", credits);
    let w = vec![
        transfer_write(&t, owner),
        adjust(
            ent,
            &[("available", -credits), ("held", credits)],
            vec![Cond::NumAtLeast("available".into(), credits)],
        ),
        Write::create(hold_item),
    ];
    (t, w)
}

fn settle_hold(
    kind: &str,
    to_status: &str,
    ent: &str,
    owner: &str,
    run_id: &str,
    subject: &str,
    credits: i64,
) -> (Transfer, Vec<Write>) {
    let (credit, add): (String, Vec<(&str, i64)>) = if kind == "capture" {
        (
            REVENUE_ACCOUNT.to_string(),
            vec![("held", -credits), ("captured", credits)],
        )
    } else {
        (
            available(ent),
            vec![
                ("held", -credits),
                ("available", credits),
                ("released", credits),
            ],
        )
    };
    let t = transfer(kind, subject, held(ent), credit, credits, ent, Some(run_id));
    let w = vec![
        transfer_write(&t, owner),
        adjust(ent, &add, vec![]),
        Write::Update {
            key: Key::new(format!("HOLD#{run_id}"), "HOLD"),
            add: vec![],
            set_attrs: vec![("status".into(), to_status.into())],
            set_doc: None,
            conds: vec![Cond::AttrEq("status".into(), "held".into())],
        },
    ];
    (t, w)
}

/// Capture at usage receipt: at most once, and only from a live hold.
pub fn capture(ent: &str, owner: &str, run_id: &str, credits: i64) -> (Transfer, Vec<Write>) {
    settle_hold("capture", "captured", ent, owner, run_id, run_id, credits)
}

/// Release on cancel: only from a live hold, never after capture.
pub fn release(ent: &str, owner: &str, run_id: &str, credits: i64) -> (Transfer, Vec<Write>) {
    settle_hold("release", "released", ent, owner, run_id, run_id, credits)
}

/// Release when the run's execution failed for good (the `n`-th failure of this run: a redriven
/// run can fail again, and each release is its own transfer). Only from a live hold.
pub fn release_failed(
    ent: &str,
    owner: &str,
    run_id: &str,
    n: u32,
    credits: i64,
) -> (Transfer, Vec<Write>) {
    let subject = format!("{run_id}_f{n}");
    settle_hold("release", "released", ent, owner, run_id, &subject, credits)
}

/// Takes a released hold again for the `n`-th redrive of a failed run; fails its condition when
/// fewer than `credits` are available (the credits went elsewhere meanwhile).
pub fn rehold(
    ent: &str,
    owner: &str,
    run_id: &str,
    n: u32,
    credits: i64,
) -> (Transfer, Vec<Write>) {
    let t = transfer(
        "hold",
        &format!("{run_id}_r{n}"),
        available(ent),
        held(ent),
        credits,
        ent,
        Some(run_id),
    );
    let w = vec![
        transfer_write(&t, owner),
        adjust(
            ent,
            &[("available", -credits), ("held", credits)],
            vec![Cond::NumAtLeast("available".into(), credits)],
        ),
        Write::Update {
            key: Key::new(format!("HOLD#{run_id}"), "HOLD"),
            add: vec![],
            set_attrs: vec![("status".into(), "held".into())],
            set_doc: None,
            conds: vec![Cond::AttrEq("status".into(), "released".into())],
        },
    ];
    (t, w)
}

/// The run's hold item status: `held`, `captured`, `released` (None if the run never held).
pub fn hold_key(run_id: &str) -> Key {
    Key::new(format!("HOLD#{run_id}"), "HOLD")
}

/// Replays the transfers into account balances; every transfer debits one account and credits
/// another by the same amount, so the sum over all accounts is zero.
pub fn account_balances(transfers: &[Transfer]) -> BTreeMap<String, i64> {
    let mut b = BTreeMap::new();
    for t in transfers {
        *b.entry(t.debit_account.clone()).or_insert(0) -= t.credits;
        *b.entry(t.credit_account.clone()).or_insert(0) += t.credits;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_balance_and_ids_are_deterministic() {
        let (f, _) = fund("cred_1", "agent_1", "test_provider", "stl_1", 10);
        let (h, _) = hold("cred_1", "agent_1", "run_a", 3);
        let (c, _) = capture("cred_1", "agent_1", "run_a", 3);
        let (h2, _) = hold("cred_1", "agent_1", "run_b", 2);
        let (r, _) = release("cred_1", "agent_1", "run_b", 2);
        assert_eq!(
            h.transfer_id,
            hold("cred_1", "agent_1", "run_a", 3).0.transfer_id
        );
        let b = account_balances(&[f, h, c, h2, r]);
        assert_eq!(b.values().sum::<i64>(), 0);
        assert_eq!(b["entitlement:cred_1:available"], 7);
        assert_eq!(b["entitlement:cred_1:held"], 0);
        assert_eq!(b[REVENUE_ACCOUNT], 3);
        assert_eq!(b["provider:test_provider"], -10);
    }

    #[test]
    fn hold_is_conditional_on_available_credits() {
        let (_, w) = hold("cred_1", "agent_1", "run_a", 3);
        assert!(w.iter().any(|w| matches!(w, Write::Update { conds, .. } if conds.contains(&Cond::NumAtLeast("available".into(), 3)))));
        let (_, w) = capture("cred_1", "agent_1", "run_a", 3);
        assert!(w.iter().any(|w| matches!(w, Write::Update { conds, .. } if conds.contains(&Cond::AttrEq("status".into(), "held".into())))));
    }
}
