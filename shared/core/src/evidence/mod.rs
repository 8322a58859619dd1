//! TokenOps evidence review (stage 8, `tokenops_execution`): decides whether a run's evidence is
//! `sufficient` or `partial`, scores it, names what is missing and turns it into an operating
//! record. Pure and deterministic: no clock, no randomness, no hash-map ordering, and input order
//! does not change the result. This comment is the product contract (rule set
//! `tokenops_evidence_review_v1`).
//!
//! # Inputs
//! An [`EvidenceBundle`] holds JSON records, CSV exports (RFC 4180; header row, then one record
//! of the export's category per data row, every cell a string) and file manifest entries.
//! `received_inputs` = records + CSV data rows + file manifest entries. String fields are compared
//! after trimming surrounding whitespace; a blank string counts as missing.
//!
//! # Categories (in this order; the human name is what `open_items` says)
//! 1. `settlement_reference` — "settlement reference": non-empty `settlement_reference` and
//!    `provider`; when the run names a settlement provider, `provider` must equal it.
//! 2. `payment_request` — "matching payment request artifact": `provider` equals a consistent
//!    settlement reference's `provider`, and if it names a `settlement_reference`, that too.
//! 3. `credit_ledger_entry` — "credit ledger entry for the run's credit entitlement":
//!    `credit_entitlement_id` equals the run's (an x402-paid run's may name its quote instead).
//! 4. `work_order` — "work order naming the requested tool": `requested_tool` equals the run's,
//!    and `requested_capability` too when given.
//! 5. `usage_receipt` — "usage receipt tied to credit entitlement": `credit_entitlement_id`
//!    equals a consistent credit ledger entry's; `receipt_id` is optional.
//! 6. `file_manifest` — "public-safe file manifest": at least one entry (a [`FileEntry`] or a
//!    `file_manifest` record/CSV row with `name`, `media_type`, `size`, `sha256`) with non-empty
//!    name and media type, size > 0 and sha256 of 64 lower-case hex digits.
//!
//! A category *holds* when any of its inputs is consistent. Dependent categories (payment
//! request, usage receipt) cannot hold while the one they match against does not.
//!
//! # Score (0–100)
//! 5 points per present category, 10 more when it also holds (max 90), plus 5 per received input
//! beyond six, at most 10. All six holding with seven inputs scores 95.
//!
//! # Outcome
//! `sufficient` only when all six hold (next actions `issue_result_contract`,
//! `deliver_callback`); otherwise `partial` (`supply_missing_evidence`, `replay_run`).
//! `open_items` lists the categories that do not hold, in category order; a present but
//! inconsistent one carries its reasons in parentheses (sorted, `; `-joined). Quoted evidence
//! values are cut to 64 characters. `uploaded_files` is the sorted, de-duplicated set of input
//! names. The settlement trail takes the first consistent inputs in a canonical order (name,
//! then canonical JSON), preferring a settlement reference its payment request matched.
//!
//! Evidence carrying a secret is refused before anything else (see [`scan_for_secrets`]).

mod csv;
mod secrets;

pub use secrets::{scan_for_secrets, SecretFound};

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Name of the rule set above, recorded in every operating record.
pub const RULE_SET: &str = "tokenops_evidence_review_v1";

/// What the agent submits with a run (and later, to fill gaps).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvidenceBundle {
    #[serde(default)]
    pub records: Vec<EvidenceRecord>,
    #[serde(default)]
    pub csv_exports: Vec<CsvExport>,
    #[serde(default)]
    pub file_manifest: Vec<FileEntry>,
}

impl EvidenceBundle {
    /// Appends newly supplied evidence. Items equal to one already held are skipped, so
    /// re-sending evidence is a no-op rather than extra inputs that inflate the score.
    pub fn merge(&mut self, more: EvidenceBundle) {
        fn append<T: PartialEq>(into: &mut Vec<T>, more: Vec<T>) {
            for item in more {
                if !into.contains(&item) {
                    into.push(item);
                }
            }
        }
        append(&mut self.records, more.records);
        append(&mut self.csv_exports, more.csv_exports);
        append(&mut self.file_manifest, more.file_manifest);
    }
}

/// One JSON evidence record, e.g. `tokenops-demo-settlement-reference.json`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvidenceRecord {
    pub category: Category,
    pub name: String,
    pub data: Map<String, Value>,
}

/// A CSV text export: a header row, then one record of `category` per data row.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CsvExport {
    pub category: Category,
    pub name: String,
    pub content: String,
}

/// A file described rather than uploaded.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub media_type: String,
    pub size: u64,
    pub sha256: String,
}

/// The six evidence categories, declared in review order (which `Ord` follows).
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    SettlementReference,
    PaymentRequest,
    CreditLedgerEntry,
    WorkOrder,
    UsageReceipt,
    FileManifest,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::SettlementReference,
        Category::PaymentRequest,
        Category::CreditLedgerEntry,
        Category::WorkOrder,
        Category::UsageReceipt,
        Category::FileManifest,
    ];

    /// Wording used in `open_items` (and the exception ticket's `missing_items`).
    pub fn human_name(self) -> &'static str {
        match self {
            Category::SettlementReference => "settlement reference",
            Category::PaymentRequest => "matching payment request artifact",
            Category::CreditLedgerEntry => "credit ledger entry for the run's credit entitlement",
            Category::WorkOrder => "work order naming the requested tool",
            Category::UsageReceipt => "usage receipt tied to credit entitlement",
            Category::FileManifest => "public-safe file manifest",
        }
    }
}

/// What the run asked for; the evidence must agree with it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReviewContext {
    pub run_id: String,
    pub requested_tool: String,
    pub requested_capability: String,
    pub credit_entitlement_id: String,
    #[serde(default)]
    pub settlement_provider: Option<String>,
    /// An x402-paid run: its entitlement is created by the paying request, so the agent cannot
    /// name it in the evidence it sends with that request; a credit ledger entry may name the
    /// run's quote instead (the quote is what was paid for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_quote_id: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceStatus {
    Sufficient,
    Partial,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NextAction {
    SupplyMissingEvidence,
    ReplayRun,
    IssueResultContract,
    DeliverCallback,
}

/// How one category fared.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct CategoryResult {
    pub category: Category,
    pub label: String,
    pub present: bool,
    pub consistent: bool,
    /// Inputs of this category (records, CSV rows, manifest entries).
    pub inputs: u32,
    pub points: u8,
    /// "present and consistent", "not supplied", or the reasons it does not hold.
    pub detail: String,
}

/// The links from the run back to the settlement that funded it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SettlementTrail {
    pub settlement_reference: Option<String>,
    pub provider: Option<String>,
    pub payment_request_id: Option<String>,
    /// The run's entitlement (always known); the category results say whether evidence backs it.
    pub credit_entitlement_id: String,
    /// The usage receipt's `receipt_id`, when a consistent receipt gives one.
    pub usage_receipt: Option<String>,
}

/// Manifest output `tokenops_review`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TokenopsReview {
    pub evidence_status: EvidenceStatus,
    pub evidence_score: u8,
    pub categories: Vec<CategoryResult>,
}

/// Manifest output `evidence_summary`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct EvidenceSummary {
    pub received_inputs: u32,
    /// Every category appears, in category order, even at zero.
    pub inputs_by_category: BTreeMap<Category, u32>,
    pub uploaded_files: Vec<String>,
}

/// Manifest output `operating_record`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct OperatingRecord {
    pub run_id: String,
    pub requested_tool: String,
    pub requested_capability: String,
    pub evidence_status: EvidenceStatus,
    pub settlement_trail: SettlementTrail,
    pub open_items: Vec<String>,
    pub next_actions: Vec<NextAction>,
    pub reviewed_by: String,
}

/// The review's verdict; top-level fields mirror the seed's result package.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Review {
    pub evidence_status: EvidenceStatus,
    pub evidence_score: u8,
    pub received_inputs: u32,
    pub uploaded_files: Vec<String>,
    pub categories: Vec<CategoryResult>,
    pub open_items: Vec<String>,
    pub next_actions: Vec<NextAction>,
    pub settlement_trail: SettlementTrail,
    pub tokenops_review: TokenopsReview,
    pub evidence_summary: EvidenceSummary,
    pub operating_record: OperatingRecord,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvidenceError {
    #[error(transparent)]
    Secret(#[from] SecretFound),
    /// `field` is e.g. `evidence.csv_exports[0].content`; `reason` names the row, never a cell.
    #[error("{field} is not valid CSV: {reason}")]
    Csv { field: String, reason: String },
}

/// An evidence input's fields (a JSON record's data, or a CSV row keyed by header).
type Fields = Map<String, Value>;

/// One evidence input normalised to a JSON object, with a canonical key so that the order the
/// agent sent things in cannot influence which input the review picks.
struct Input {
    sort_key: (String, String),
    data: Fields,
}

/// Reviews `bundle` against the run in `ctx` by the rules in the module documentation.
pub fn review(bundle: &EvidenceBundle, ctx: &ReviewContext) -> Result<Review, EvidenceError> {
    scan_for_secrets(bundle)?;
    let inputs = collect(bundle)?;
    let of = |c: Category| inputs.get(&c).map(Vec::as_slice).unwrap_or_default();

    // Each category: the consistent inputs (canonical order) and the reasons the others fail.
    let settlements = judge(of(Category::SettlementReference), |d| {
        check_settlement(d, ctx)
    });
    let (payments, payment_pairs) = judge_against(
        of(Category::PaymentRequest),
        &settlements.ok,
        check_payment,
        "no consistent settlement reference to match",
    );
    let ledgers = judge(of(Category::CreditLedgerEntry), |d| {
        match &ctx.paid_quote_id {
            Some(q) if text(d, "credit_entitlement_id").is_ok_and(|g| g == q.trim()) => Ok(()),
            _ => expect_eq(
                d,
                "credit_entitlement_id",
                &ctx.credit_entitlement_id,
                "the run's",
            ),
        }
    });
    let work_orders = judge(of(Category::WorkOrder), |d| check_work_order(d, ctx));
    let (receipts, _) = judge_against(
        of(Category::UsageReceipt),
        &ledgers.ok,
        check_receipt,
        "no consistent credit ledger entry to match",
    );
    let files = judge(of(Category::FileManifest), check_file);

    let outcomes = [
        &settlements,
        &payments,
        &ledgers,
        &work_orders,
        &receipts,
        &files,
    ];
    let mut categories = Vec::with_capacity(6);
    let mut open_items = Vec::new();
    for (category, outcome) in Category::ALL.into_iter().zip(outcomes) {
        let count = count_u32(of(category).len());
        let present = count > 0;
        let consistent = !outcome.ok.is_empty();
        let reasons = outcome
            .reasons
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        let detail = match (present, consistent) {
            (_, true) => "present and consistent".to_string(),
            (false, _) => "not supplied".to_string(),
            (true, false) => reasons.clone(),
        };
        if !consistent {
            open_items.push(if present {
                format!("{} ({reasons})", category.human_name())
            } else {
                category.human_name().to_string()
            });
        }
        categories.push(CategoryResult {
            category,
            label: category.human_name().to_string(),
            present,
            consistent,
            inputs: count,
            points: u8::from(present) * 5 + u8::from(consistent) * 10,
            detail,
        });
    }

    let received_inputs = (categories.iter()).fold(0u32, |n, c| n.saturating_add(c.inputs));
    let bonus = (received_inputs.saturating_sub(6).saturating_mul(5)).min(10);
    let base: u32 = categories.iter().map(|c| u32::from(c.points)).sum();
    let evidence_score = u8::try_from((base + bonus).min(100)).unwrap_or(100);
    let (evidence_status, next_actions) = if open_items.is_empty() {
        (
            EvidenceStatus::Sufficient,
            vec![NextAction::IssueResultContract, NextAction::DeliverCallback],
        )
    } else {
        (
            EvidenceStatus::Partial,
            vec![NextAction::SupplyMissingEvidence, NextAction::ReplayRun],
        )
    };

    let settlement = payment_pairs
        .first()
        .map(|&(_, s)| s)
        .or(settlements.ok.first().copied());
    let settlement_trail = SettlementTrail {
        settlement_reference: settlement.and_then(|s| text_of(s, "settlement_reference")),
        provider: settlement.and_then(|s| text_of(s, "provider")),
        payment_request_id: payment_pairs
            .first()
            .and_then(|&(p, _)| text_of(p, "payment_request_id")),
        credit_entitlement_id: ctx.credit_entitlement_id.clone(),
        usage_receipt: receipts.ok.first().and_then(|r| text_of(r, "receipt_id")),
    };

    let uploaded_files: Vec<String> = bundle
        .records
        .iter()
        .map(|r| &r.name)
        .chain(bundle.csv_exports.iter().map(|c| &c.name))
        .chain(bundle.file_manifest.iter().map(|f| &f.name))
        .filter(|n| !n.trim().is_empty())
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let inputs_by_category = categories.iter().map(|c| (c.category, c.inputs)).collect();

    Ok(Review {
        evidence_status,
        evidence_score,
        received_inputs,
        uploaded_files: uploaded_files.clone(),
        categories: categories.clone(),
        open_items: open_items.clone(),
        next_actions: next_actions.clone(),
        settlement_trail: settlement_trail.clone(),
        tokenops_review: TokenopsReview {
            evidence_status,
            evidence_score,
            categories,
        },
        evidence_summary: EvidenceSummary {
            received_inputs,
            inputs_by_category,
            uploaded_files,
        },
        operating_record: OperatingRecord {
            run_id: ctx.run_id.clone(),
            requested_tool: ctx.requested_tool.clone(),
            requested_capability: ctx.requested_capability.clone(),
            evidence_status,
            settlement_trail,
            open_items,
            next_actions,
            reviewed_by: RULE_SET.to_string(),
        },
    })
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Normalises every input to an object and sorts each category canonically.
fn collect(bundle: &EvidenceBundle) -> Result<BTreeMap<Category, Vec<Input>>, EvidenceError> {
    let mut out: BTreeMap<Category, Vec<Input>> = BTreeMap::new();
    let mut add = |category, name: &str, data: Map<String, Value>| {
        let canonical = serde_json::to_string(&data).unwrap_or_default();
        out.entry(category).or_default().push(Input {
            sort_key: (name.to_string(), canonical),
            data,
        });
    };
    for r in &bundle.records {
        add(r.category, &r.name, r.data.clone());
    }
    for (i, c) in bundle.csv_exports.iter().enumerate() {
        let rows = csv::parse_rows(&c.content)
            .and_then(|rows| csv::into_records(&rows))
            .map_err(|e| EvidenceError::Csv {
                field: format!("evidence.csv_exports[{i}].content"),
                reason: format!("row {}: {}", e.row, e.reason),
            })?;
        for row in rows {
            add(c.category, &c.name, row);
        }
    }
    for f in &bundle.file_manifest {
        let data = serde_json::json!({
            "name": f.name, "media_type": f.media_type, "size": f.size, "sha256": f.sha256,
        });
        if let Value::Object(map) = data {
            add(Category::FileManifest, &f.name, map);
        }
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| a.sort_key.cmp(&b.sort_key));
    }
    Ok(out)
}

#[derive(Default)]
struct Outcome<'a> {
    ok: Vec<&'a Input>,
    reasons: BTreeSet<String>,
}

/// Splits a category's inputs into consistent ones and the (sorted, unique) failure reasons.
fn judge<'a>(inputs: &'a [Input], check: impl Fn(&Fields) -> Result<(), String>) -> Outcome<'a> {
    let mut outcome = Outcome::default();
    for input in inputs {
        match check(&input.data) {
            Ok(()) => outcome.ok.push(input),
            Err(reason) => {
                outcome.reasons.insert(reason);
            }
        }
    }
    outcome
}

/// Like [`judge`] for a category that must match an input of another category (`anchors`, the
/// consistent ones in canonical order). Returns the matched pairs too; a failing input is
/// explained against the first anchor.
fn judge_against<'a>(
    inputs: &'a [Input],
    anchors: &[&'a Input],
    check: fn(&Fields, &Fields) -> Result<(), String>,
    no_anchor: &str,
) -> (Outcome<'a>, Vec<(&'a Input, &'a Input)>) {
    let mut outcome = Outcome::default();
    let mut pairs = Vec::new();
    for input in inputs {
        match anchors.iter().find(|a| check(&input.data, &a.data).is_ok()) {
            Some(&anchor) => {
                outcome.ok.push(input);
                pairs.push((input, anchor));
            }
            None => {
                let reason = match anchors.first() {
                    Some(a) => check(&input.data, &a.data).err().unwrap_or_default(),
                    None => no_anchor.to_string(),
                };
                outcome.reasons.insert(reason);
            }
        }
    }
    (outcome, pairs)
}

/// Quotes an evidence value for a reason, bounded so one huge field cannot bloat open items.
fn quote(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("'{}…'", &s[..cut]),
        None => format!("'{s}'"),
    }
}

/// A required string field, trimmed; blank or absent is "missing".
fn text<'a>(d: &'a Fields, key: &str) -> Result<&'a str, String> {
    match opt_text(d, key)? {
        Some(s) => Ok(s),
        None => Err(format!("field '{key}' is missing")),
    }
}

/// An optional string field: absent, null or blank is `None`; another JSON type is an error.
fn opt_text<'a>(d: &'a Fields, key: &str) -> Result<Option<&'a str>, String> {
    match d.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim())),
        Some(_) => Err(format!("field '{key}' must be a string")),
    }
}

fn text_of(input: &Input, key: &str) -> Option<String> {
    opt_text(&input.data, key)
        .ok()
        .flatten()
        .map(str::to_string)
}

/// `key` must equal `want`; `whose` says where `want` came from, for the reason text.
fn expect_eq(d: &Fields, key: &str, want: &str, whose: &str) -> Result<(), String> {
    let got = text(d, key)?;
    if got == want.trim() {
        Ok(())
    } else {
        let what = key.trim_end_matches("_id").replace('_', " ");
        Err(format!(
            "{what} {} does not match {whose} {}",
            quote(got),
            quote(want)
        ))
    }
}

fn check_settlement(d: &Fields, ctx: &ReviewContext) -> Result<(), String> {
    text(d, "settlement_reference")?;
    match ctx.settlement_provider.as_deref() {
        Some(want) => expect_eq(d, "provider", want, "the run's settlement provider"),
        None => text(d, "provider").map(drop),
    }
}

fn check_payment(p: &Fields, s: &Fields) -> Result<(), String> {
    let provider = text(s, "provider")?;
    expect_eq(p, "provider", provider, "settlement provider")?;
    match opt_text(p, "settlement_reference")? {
        Some(_) => expect_eq(
            p,
            "settlement_reference",
            text(s, "settlement_reference")?,
            "the settlement's",
        ),
        None => Ok(()),
    }
}

fn check_work_order(d: &Fields, ctx: &ReviewContext) -> Result<(), String> {
    expect_eq(d, "requested_tool", &ctx.requested_tool, "the run's")?;
    match opt_text(d, "requested_capability")? {
        Some(_) => expect_eq(
            d,
            "requested_capability",
            &ctx.requested_capability,
            "the run's",
        ),
        None => Ok(()),
    }
}

fn check_receipt(r: &Fields, ledger: &Fields) -> Result<(), String> {
    let want = text(ledger, "credit_entitlement_id")?;
    expect_eq(
        r,
        "credit_entitlement_id",
        want,
        "the credit ledger entry's",
    )
}

fn check_file(d: &Fields) -> Result<(), String> {
    let name = text(d, "name")?;
    let inner = || -> Result<(), String> {
        text(d, "media_type")?;
        let size = match d.get("size") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        if !matches!(size, Some(n) if n > 0) {
            return Err("field 'size' must be a positive integer".into());
        }
        let sha = text(d, "sha256")?;
        if sha.len() != 64 || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err("field 'sha256' must be 64 lower-case hex digits".into());
        }
        Ok(())
    };
    inner().map_err(|reason| format!("file {}: {reason}", quote(name)))
}

#[cfg(test)]
mod tests;
