use super::*;
use serde_json::json;

const CRED: &str = "cred_demo_tokenops_001";
const STL: &str = "stl_demo_20260602_001";
const HEX_A: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const HEX_B: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn ctx() -> ReviewContext {
    ReviewContext {
        run_id: "run_demo_001".into(),
        requested_tool: "tokenops".into(),
        requested_capability: "tokenops_result_package".into(),
        credit_entitlement_id: CRED.into(),
        settlement_provider: Some("test_provider".into()),
        paid_quote_id: None,
    }
}

fn rec(category: Category, name: &str, data: Value) -> EvidenceRecord {
    let Value::Object(data) = data else {
        panic!("record data must be an object")
    };
    EvidenceRecord {
        category,
        name: name.into(),
        data,
    }
}

fn file(name: &str, size: u64, sha256: &str) -> FileEntry {
    FileEntry {
        name: name.into(),
        media_type: "application/json".into(),
        size,
        sha256: sha256.into(),
    }
}

fn settlement() -> EvidenceRecord {
    rec(
        Category::SettlementReference,
        "tokenops-demo-settlement-reference.json",
        json!({"settlement_reference": STL, "provider": "test_provider", "invoice_token": "inv_demo_001"}),
    )
}

fn payment() -> EvidenceRecord {
    rec(
        Category::PaymentRequest,
        "tokenops-demo-payment-request.json",
        json!({"payment_request_id": "payreq_demo_001", "provider": "test_provider", "settlement_reference": STL, "amount_credits": 10}),
    )
}

fn ledger() -> EvidenceRecord {
    rec(
        Category::CreditLedgerEntry,
        "tokenops-demo-credit-ledger.json",
        json!({"credit_entitlement_id": CRED, "credits": 10}),
    )
}

fn work_order() -> EvidenceRecord {
    rec(
        Category::WorkOrder,
        "tokenops-demo-work-order.json",
        json!({"requested_tool": "tokenops", "requested_capability": "tokenops_result_package"}),
    )
}

fn receipt() -> EvidenceRecord {
    rec(
        Category::UsageReceipt,
        "tokenops-demo-usage-receipt.json",
        json!({"receipt_id": "usage_demo_20260602_001", "credit_entitlement_id": CRED, "credits_debited": 1, "remaining_credits": 9, "token_count": 1834}),
    )
}

fn manifest() -> Vec<FileEntry> {
    vec![
        file("tokenops-demo-settlement-reference.json", 412, HEX_A),
        file("tokenops-demo-usage-receipt.json", 388, HEX_B),
    ]
}

/// Six consistent categories from seven inputs (five records, two manifest entries).
fn full() -> EvidenceBundle {
    EvidenceBundle {
        records: vec![settlement(), payment(), ledger(), work_order(), receipt()],
        csv_exports: vec![],
        file_manifest: manifest(),
    }
}

/// The seed's exception ticket: payment request and usage receipt missing.
fn seed_partial() -> EvidenceBundle {
    EvidenceBundle {
        records: vec![settlement(), ledger(), work_order()],
        csv_exports: vec![],
        file_manifest: manifest(),
    }
}

fn run(bundle: &EvidenceBundle) -> Review {
    review(bundle, &ctx()).expect("review succeeds")
}

/// Replaces the record of `category` in the full bundle with one built from `data`.
fn full_with(category: Category, data: Value) -> EvidenceBundle {
    let mut b = full();
    let r = b
        .records
        .iter_mut()
        .find(|r| r.category == category)
        .unwrap();
    r.data = rec(category, "x", data).data;
    b
}

#[test]
fn full_bundle_is_sufficient_and_scores_95() {
    let r = run(&full());
    assert_eq!(r.evidence_status, EvidenceStatus::Sufficient);
    assert_eq!(r.evidence_score, 95);
    assert_eq!(r.received_inputs, 7);
    assert_eq!(r.open_items, Vec::<String>::new());
    assert_eq!(
        r.next_actions,
        [NextAction::IssueResultContract, NextAction::DeliverCallback]
    );
    assert_eq!(
        r.uploaded_files,
        [
            "tokenops-demo-credit-ledger.json",
            "tokenops-demo-payment-request.json",
            "tokenops-demo-settlement-reference.json",
            "tokenops-demo-usage-receipt.json",
            "tokenops-demo-work-order.json",
        ]
    );
    assert_eq!(
        r.settlement_trail,
        SettlementTrail {
            settlement_reference: Some(STL.into()),
            provider: Some("test_provider".into()),
            payment_request_id: Some("payreq_demo_001".into()),
            credit_entitlement_id: CRED.into(),
            usage_receipt: Some("usage_demo_20260602_001".into()),
        }
    );
    let points: Vec<_> = r
        .categories
        .iter()
        .map(|c| (c.category, c.points))
        .collect();
    assert_eq!(points, Category::ALL.map(|c| (c, 15)));
    assert!(r
        .categories
        .iter()
        .all(|c| c.detail == "present and consistent"));
    assert_eq!(r.tokenops_review.categories, r.categories);
    assert_eq!(
        r.operating_record.reviewed_by,
        "tokenops_evidence_review_v1"
    );
    assert_eq!(r.operating_record.settlement_trail, r.settlement_trail);
    assert_eq!(
        r.evidence_summary.inputs_by_category[&Category::FileManifest],
        2
    );
    assert_eq!(r.evidence_summary.inputs_by_category.len(), 6);
}

#[test]
fn seed_partial_example_names_the_gap() {
    let r = run(&seed_partial());
    assert_eq!(r.evidence_status, EvidenceStatus::Partial);
    assert_eq!(r.evidence_score, 60); // 4 × 15, five inputs earn no bonus
    assert_eq!(r.received_inputs, 5);
    assert_eq!(
        r.open_items,
        [
            "matching payment request artifact",
            "usage receipt tied to credit entitlement"
        ]
    );
    assert_eq!(
        r.next_actions,
        [NextAction::SupplyMissingEvidence, NextAction::ReplayRun]
    );
    let pr = &r.categories[1];
    assert_eq!(
        (pr.present, pr.consistent, pr.points, pr.detail.as_str()),
        (false, false, 0, "not supplied")
    );
    assert_eq!(r.settlement_trail.payment_request_id, None);
    assert_eq!(r.settlement_trail.usage_receipt, None);
    assert_eq!(
        r.settlement_trail.settlement_reference.as_deref(),
        Some(STL)
    );
    assert_eq!(r.operating_record.open_items, r.open_items);
}

#[test]
fn empty_bundle_lists_all_six_and_scores_zero() {
    let r = run(&EvidenceBundle::default());
    assert_eq!((r.evidence_score, r.received_inputs), (0, 0));
    let names: Vec<_> = Category::ALL.map(Category::human_name).to_vec();
    assert_eq!(r.open_items, names);
}

#[test]
fn input_bonus_is_capped_at_ten() {
    let mut b = seed_partial();
    for i in 0..5 {
        b.file_manifest
            .push(file(&format!("extra-{i}.json"), 10, HEX_A));
    }
    let r = run(&b);
    assert_eq!((r.received_inputs, r.evidence_score), (10, 70)); // 60 + min(20, 10)
    let mut b = full();
    b.file_manifest.push(file("extra.json", 10, HEX_B));
    b.file_manifest.push(file("extra-2.json", 10, HEX_B));
    assert_eq!(run(&b).evidence_score, 100); // 90 + 10, never above 100
}

#[test]
fn json_keeps_the_seed_field_names() {
    let v = serde_json::to_value(run(&full())).unwrap();
    assert_eq!(v["evidence_status"], "sufficient");
    assert_eq!(v["evidence_score"], 95);
    assert_eq!(v["received_inputs"], 7);
    assert_eq!(v["uploaded_files"][3], "tokenops-demo-usage-receipt.json");
    assert_eq!(
        v["settlement_trail"]["usage_receipt"],
        "usage_demo_20260602_001"
    );
    assert_eq!(
        v["next_actions"],
        json!(["issue_result_contract", "deliver_callback"])
    );
    assert_eq!(
        v["tokenops_review"]["categories"][1]["category"],
        "payment_request"
    );
    assert_eq!(
        v["evidence_summary"]["inputs_by_category"]["settlement_reference"],
        1
    );
    assert_eq!(
        v["operating_record"]["reviewed_by"],
        "tokenops_evidence_review_v1"
    );
    let back: Review = serde_json::from_value(v).unwrap();
    assert_eq!(back, run(&full()));
    let schema = serde_json::to_string(&schemars::schema_for!(Review)).unwrap();
    assert!(schema.contains("operating_record") && schema.contains("partial"));
}

#[test]
fn each_inconsistency_rule() {
    let pr = "matching payment request artifact";
    let cases: Vec<(&str, EvidenceBundle, Vec<String>, u8)> = vec![
        (
            "settlement provider differs from the run's",
            full_with(
                Category::SettlementReference,
                json!({"settlement_reference": STL, "provider": "other_pay"}),
            ),
            vec![
                "settlement reference (provider 'other_pay' does not match the run's settlement provider 'test_provider')".into(),
                format!("{pr} (no consistent settlement reference to match)"),
            ],
            75,
        ),
        (
            "settlement reference missing",
            full_with(
                Category::SettlementReference,
                json!({"settlement_reference": "  ", "provider": "test_provider"}),
            ),
            vec![
                "settlement reference (field 'settlement_reference' is missing)".into(),
                format!("{pr} (no consistent settlement reference to match)"),
            ],
            75,
        ),
        (
            "payment request from another provider",
            full_with(
                Category::PaymentRequest,
                json!({"provider": "x402_base", "settlement_reference": STL}),
            ),
            vec![format!(
                "{pr} (provider 'x402_base' does not match settlement provider 'test_provider')"
            )],
            85,
        ),
        (
            "payment request names another settlement",
            full_with(
                Category::PaymentRequest,
                json!({"provider": "test_provider", "settlement_reference": "stl_other"}),
            ),
            vec![format!(
                "{pr} (settlement reference 'stl_other' does not match the settlement's '{STL}')"
            )],
            85,
        ),
        (
            "ledger entry for another entitlement",
            full_with(
                Category::CreditLedgerEntry,
                json!({"credit_entitlement_id": "cred_other"}),
            ),
            vec![
                format!("credit ledger entry for the run's credit entitlement (credit entitlement 'cred_other' does not match the run's '{CRED}')"),
                "usage receipt tied to credit entitlement (no consistent credit ledger entry to match)".into(),
            ],
            75,
        ),
        (
            "work order for another tool",
            full_with(Category::WorkOrder, json!({"requested_tool": "other_tool"})),
            vec!["work order naming the requested tool (requested tool 'other_tool' does not match the run's 'tokenops')".into()],
            85,
        ),
        (
            "work order for another capability",
            full_with(
                Category::WorkOrder,
                json!({"requested_tool": "tokenops", "requested_capability": "audit"}),
            ),
            vec!["work order naming the requested tool (requested capability 'audit' does not match the run's 'tokenops_result_package')".into()],
            85,
        ),
        (
            "work order with a non-string tool",
            full_with(Category::WorkOrder, json!({"requested_tool": 7})),
            vec!["work order naming the requested tool (field 'requested_tool' must be a string)".into()],
            85,
        ),
        (
            "usage receipt for another entitlement",
            full_with(
                Category::UsageReceipt,
                json!({"receipt_id": "u1", "credit_entitlement_id": "cred_other"}),
            ),
            vec![format!("usage receipt tied to credit entitlement (credit entitlement 'cred_other' does not match the credit ledger entry's '{CRED}')")],
            85,
        ),
        (
            "file manifest entries malformed",
            EvidenceBundle {
                file_manifest: vec![
                    file("tokenops-demo-settlement-reference.json", 412, &HEX_A.to_uppercase()),
                    file("tokenops-demo-usage-receipt.json", 0, HEX_B),
                ],
                ..full()
            },
            vec!["public-safe file manifest (file 'tokenops-demo-settlement-reference.json': field 'sha256' must be 64 lower-case hex digits; file 'tokenops-demo-usage-receipt.json': field 'size' must be a positive integer)".into()],
            85,
        ),
        (
            "file manifest entry without media type",
            EvidenceBundle {
                file_manifest: vec![FileEntry {
                    media_type: " ".into(),
                    ..file("a.json", 1, HEX_A)
                }],
                ..full()
            },
            vec!["public-safe file manifest (file 'a.json': field 'media_type' is missing)".into()],
            80, // six inputs: no bonus
        ),
    ];
    for (what, bundle, open_items, score) in cases {
        let r = run(&bundle);
        assert_eq!(r.open_items, open_items, "{what}");
        assert_eq!(r.evidence_score, score, "{what}");
        assert_eq!(r.evidence_status, EvidenceStatus::Partial, "{what}");
    }
}

#[test]
fn optional_links_and_unpinned_provider_still_hold() {
    // A payment request need not name the settlement reference.
    let b = full_with(
        Category::PaymentRequest,
        json!({"provider": "test_provider"}),
    );
    assert_eq!(run(&b).evidence_status, EvidenceStatus::Sufficient);
    // Without a provider pinned by the run, any provider works if the two agree.
    let mut b = full_with(
        Category::SettlementReference,
        json!({"settlement_reference": STL, "provider": "other_pay"}),
    );
    b.records[1]
        .data
        .insert("provider".into(), json!("other_pay"));
    let unpinned = ReviewContext {
        settlement_provider: None,
        ..ctx()
    };
    let r = review(&b, &unpinned).unwrap();
    assert_eq!(
        (r.evidence_status, r.evidence_score),
        (EvidenceStatus::Sufficient, 95)
    );
    assert_eq!(r.settlement_trail.provider.as_deref(), Some("other_pay"));
}

#[test]
fn any_consistent_record_makes_a_category_hold() {
    let mut b = full();
    b.records.insert(
        0,
        rec(
            Category::PaymentRequest,
            "a-stale-payment-request.json",
            json!({"payment_request_id": "payreq_stale", "provider": "x402_base"}),
        ),
    );
    let r = run(&b);
    assert_eq!(
        (r.evidence_status, r.evidence_score),
        (EvidenceStatus::Sufficient, 100)
    );
    assert_eq!(r.categories[1].inputs, 2);
    // The trail cites the consistent payment request, not the first one sent.
    assert_eq!(
        r.settlement_trail.payment_request_id.as_deref(),
        Some("payreq_demo_001")
    );
}

#[test]
fn csv_rows_count_as_inputs_and_quoted_cells_parse() {
    let mut b = full();
    b.records.retain(|r| r.category != Category::UsageReceipt);
    b.file_manifest.clear();
    b.csv_exports = vec![
        CsvExport {
            category: Category::UsageReceipt,
            name: "usage-receipts.csv".into(),
            content: format!(
                "receipt_id,credit_entitlement_id,credits_debited\r\nusage_old,cred_other,1\r\nusage_demo_20260602_001,{CRED},1\r\n"
            ),
        },
        CsvExport {
            category: Category::FileManifest,
            name: "manifest.csv".into(),
            content: format!(
                "name,media_type,size,sha256\n\"evidence, part 1.pdf\",application/pdf,2048,{HEX_A}\n\"the \"\"final\"\", log.txt\",text/plain,17,{HEX_B}\n"
            ),
        },
    ];
    let r = run(&b);
    assert_eq!(r.received_inputs, 8); // 4 records + 2 receipt rows + 2 manifest rows
    assert_eq!(
        (r.evidence_status, r.evidence_score),
        (EvidenceStatus::Sufficient, 100)
    );
    assert_eq!(
        r.evidence_summary.inputs_by_category[&Category::UsageReceipt],
        2
    );
    assert_eq!(
        r.settlement_trail.usage_receipt.as_deref(),
        Some("usage_demo_20260602_001")
    );
    assert!(r.uploaded_files.contains(&"manifest.csv".to_string()));

    // The parsed cell (comma and doubled quotes resolved) shows in the reason.
    b.csv_exports[1].content =
        "name,media_type,size,sha256\r\n\"the \"\"final\"\", log.txt\",text/plain,0,x\r\n".into();
    assert_eq!(
        run(&b).open_items,
        ["public-safe file manifest (file 'the \"final\", log.txt': field 'size' must be a positive integer)"]
    );
}

#[test]
fn malformed_csv_is_a_csv_error() {
    let mut b = full();
    b.csv_exports = vec![
        CsvExport {
            category: Category::UsageReceipt,
            name: "ok.csv".into(),
            content: "receipt_id\nu1\n".into(),
        },
        CsvExport {
            category: Category::UsageReceipt,
            name: "bad.csv".into(),
            content: "receipt_id,credit_entitlement_id\nu1\n".into(),
        },
    ];
    let err = review(&b, &ctx()).unwrap_err();
    assert_eq!(
        err,
        EvidenceError::Csv {
            field: "evidence.csv_exports[1].content".into(),
            reason: "row 2: has 1 fields but the header has 2".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "evidence.csv_exports[1].content is not valid CSV: row 2: has 1 fields but the header has 2"
    );
    b.csv_exports[1].content = "receipt_id\n\"unterminated\n".into();
    assert!(matches!(
        review(&b, &ctx()),
        Err(EvidenceError::Csv { reason, .. }) if reason == "row 2: unterminated quoted field"
    ));
}

#[test]
fn merging_missing_evidence_turns_partial_into_sufficient() {
    let mut b = seed_partial();
    assert_eq!(run(&b).evidence_status, EvidenceStatus::Partial);
    b.merge(EvidenceBundle {
        // The settlement reference is re-sent; it must not count twice.
        records: vec![payment(), receipt(), settlement()],
        ..Default::default()
    });
    let r = run(&b);
    assert_eq!(b.records.len(), 5);
    assert_eq!(
        (r.evidence_status, r.evidence_score),
        (EvidenceStatus::Sufficient, 95)
    );
    assert_eq!(r.received_inputs, 7);
    assert_eq!(r.open_items, Vec::<String>::new());
    assert_eq!(r, run(&full()));
}

#[test]
fn review_is_deterministic_and_order_free() {
    let mut b = full();
    b.records.push(rec(
        Category::PaymentRequest,
        "z-payment.json",
        json!({"provider": "zeta_pay"}),
    ));
    b.records.push(rec(
        Category::PaymentRequest,
        "a-payment.json",
        json!({"provider": "alpha_pay"}),
    ));
    b.records
        .retain(|r| r.name != "tokenops-demo-payment-request.json");
    // Two consistent receipts: the trail must cite the same one whatever the order
    // (the canonical first by name: "…-receipt-2.json" sorts before "…-receipt.json").
    b.records.push(rec(
        Category::UsageReceipt,
        "tokenops-demo-usage-receipt-2.json",
        json!({"receipt_id": "usage_demo_20260602_002", "credit_entitlement_id": CRED}),
    ));
    let first = run(&b);
    assert_eq!(
        first.settlement_trail.usage_receipt.as_deref(),
        Some("usage_demo_20260602_002")
    );
    assert_eq!(first, run(&b));
    assert_eq!(
        first.open_items,
        ["matching payment request artifact (provider 'alpha_pay' does not match settlement provider 'test_provider'; provider 'zeta_pay' does not match settlement provider 'test_provider')"]
    );
    let mut shuffled = b.clone();
    shuffled.records.reverse();
    shuffled.records.rotate_left(2);
    shuffled.file_manifest.reverse();
    let second = run(&shuffled);
    assert_eq!(
        (
            second.evidence_score,
            second.evidence_status,
            &second.open_items
        ),
        (
            first.evidence_score,
            first.evidence_status,
            &first.open_items
        )
    );
    assert_eq!(
        serde_json::to_string(&second).unwrap(),
        serde_json::to_string(&first).unwrap()
    );
}

#[test]
fn review_refuses_secrets_before_scoring() {
    let mut b = full();
    b.records[2]
        .data
        .insert("credentials".into(), json!({"password": "hunter2hunter2"}));
    let err = review(&b, &ctx()).unwrap_err();
    assert_eq!(
        err,
        EvidenceError::Secret(SecretFound {
            field: "evidence.records[2].data.credentials.password".into(),
            kind: "password_field",
        })
    );
    assert!(!err.to_string().contains("hunter2"));
    // A normal bundle passes the scan.
    assert_eq!(scan_for_secrets(&full()), Ok(()));
}

#[test]
fn bundle_json_is_strict_and_defaults_empty_lists() {
    let b: EvidenceBundle = serde_json::from_value(json!({
        "records": [{"category": "work_order", "name": "wo.json", "data": {"requested_tool": "tokenops"}}]
    }))
    .unwrap();
    assert_eq!(b.records[0].category, Category::WorkOrder);
    assert!(b.csv_exports.is_empty() && b.file_manifest.is_empty());
    assert!(serde_json::from_value::<EvidenceBundle>(json!({"attachments": []})).is_err());
    assert!(serde_json::from_value::<EvidenceBundle>(
        json!({"records": [{"category": "invoice", "name": "x", "data": {}}]})
    )
    .is_err());
}
