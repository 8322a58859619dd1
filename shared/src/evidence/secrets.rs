//! Refusal of evidence that carries credentials.
//!
//! Evidence is stored, hashed into ledgers and echoed in result packages, so a secret in it would
//! leak everywhere downstream. The scan walks every string (record names, nested JSON values, CSV
//! cells, file manifest entries) and reports the *first* hit by path and kind, never by value.
//!
//! Rules, all hand-written (no regex):
//! - **Key names** — lower-cased with `-`, `_`, `.` and spaces removed — ending in `password`,
//!   `passwd`, `passphrase` (kind `password_field`), `privatekey` (`private_key`),
//!   `secretaccesskey` (`cloud_access_key`), or `secret`, `secretkey`, `apikey`, `accesstoken`,
//!   `authtoken`, `refreshtoken` (`secret_field`), when the value is non-empty (a non-blank
//!   string, a number, or a container holding one). Suffix matching catches `db_password` and
//!   `x-api-key` while leaving `token_count`, `invoice_token` or `has_secret: false` alone.
//! - **Values** containing `-----BEGIN` and `PRIVATE KEY` (`private_key`); an AWS access key id,
//!   `AKIA`/`ASIA` + 16 upper-case alphanumerics as a whole token (`cloud_access_key`);
//!   `Bearer <token>` where the token is ≥ 8 token68 characters holding a digit or symbol, or
//!   ≥ 20 of any (`bearer_token`); GitHub (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`),
//!   Slack (`xoxb-`, `xoxp-`, `xoxa-`, `xoxr-`, `xoxs-`) and Stripe live (`sk_live_`, `rk_live_`)
//!   tokens (`bearer_token`: each is presented as a bearer credential).
//! - A CSV export that cannot be parsed is still scanned line by line with naive comma splitting,
//!   so a malformed file cannot smuggle a key past the scan.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{csv, EvidenceBundle};

/// A refused piece of evidence: where it is and what it looks like, never what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, thiserror::Error)]
#[error("evidence field {field} carries a secret ({kind}); evidence must be public-safe, so it is refused and the value is neither stored nor echoed")]
pub struct SecretFound {
    /// Path such as `evidence.records[2].data.credentials.password`.
    pub field: String,
    /// One of `private_key`, `cloud_access_key`, `bearer_token`, `password_field`, `secret_field`.
    pub kind: &'static str,
}

/// Scans the whole bundle; `Err` on the first secret in a stable order (records, CSV exports,
/// file manifest; JSON object keys in sorted order).
pub fn scan_for_secrets(bundle: &EvidenceBundle) -> Result<(), SecretFound> {
    for (i, r) in bundle.records.iter().enumerate() {
        let base = format!("evidence.records[{i}]");
        check_str(&r.name, || format!("{base}.name"))?;
        scan_object(&r.data, &format!("{base}.data"))?;
    }
    for (i, c) in bundle.csv_exports.iter().enumerate() {
        let base = format!("evidence.csv_exports[{i}]");
        check_str(&c.name, || format!("{base}.name"))?;
        scan_csv(&c.content, &format!("{base}.content"))?;
    }
    for (i, f) in bundle.file_manifest.iter().enumerate() {
        let base = format!("evidence.file_manifest[{i}]");
        check_str(&f.name, || format!("{base}.name"))?;
        check_str(&f.media_type, || format!("{base}.media_type"))?;
        check_str(&f.sha256, || format!("{base}.sha256"))?;
    }
    Ok(())
}

fn found(field: String, kind: &'static str) -> SecretFound {
    SecretFound { field, kind }
}

fn check_str(s: &str, path: impl FnOnce() -> String) -> Result<(), SecretFound> {
    match value_kind(s) {
        Some(kind) => Err(found(path(), kind)),
        None => Ok(()),
    }
}

fn scan_object(map: &Map<String, Value>, path: &str) -> Result<(), SecretFound> {
    for (key, value) in map {
        // A key that is itself a secret must not be echoed in the path either.
        check_str(key, || format!("{path} (an object key)"))?;
        let here = format!("{path}.{key}");
        if let Some(kind) = key_kind(key) {
            if non_empty(value) {
                return Err(found(here, kind));
            }
        }
        scan_value(value, &here)?;
    }
    Ok(())
}

fn scan_value(value: &Value, path: &str) -> Result<(), SecretFound> {
    match value {
        Value::String(s) => check_str(s, || path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| scan_value(v, &format!("{path}[{i}]"))),
        Value::Object(map) => scan_object(map, path),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

fn scan_csv(content: &str, path: &str) -> Result<(), SecretFound> {
    let Ok(rows) = csv::parse_rows(content) else {
        for (i, line) in content.lines().enumerate() {
            let at = || format!("{path} line {}", i + 1);
            check_str(line, at)?;
            for cell in line.split(',') {
                check_str(cell.trim().trim_matches('"'), at)?;
            }
        }
        return Ok(());
    };
    let Some((header, data)) = rows.split_first() else {
        return Ok(());
    };
    for (c, h) in header.iter().enumerate() {
        check_str(h, || format!("{path} header column {}", c + 1))?;
    }
    for (r, cells) in data.iter().enumerate() {
        for (c, cell) in cells.iter().enumerate() {
            let column = header.get(c).map(|h| h.trim());
            let at = || match column {
                Some(h) => format!("{path} row {} column {h}", r + 2),
                None => format!("{path} row {} column #{}", r + 2, c + 1),
            };
            if let Some(kind) = column.and_then(key_kind) {
                if !cell.trim().is_empty() {
                    return Err(found(at(), kind));
                }
            }
            check_str(cell, at)?;
        }
    }
    Ok(())
}

/// Values that hold content: blank strings, booleans, nulls and empty containers do not.
fn non_empty(value: &Value) -> bool {
    match value {
        Value::String(s) => !s.trim().is_empty(),
        Value::Number(_) => true,
        Value::Array(items) => items.iter().any(non_empty),
        Value::Object(map) => map.values().any(non_empty),
        Value::Null | Value::Bool(_) => false,
    }
}

const KEY_SUFFIXES: &[(&str, &str)] = &[
    ("password", "password_field"),
    ("passwd", "password_field"),
    ("passphrase", "password_field"),
    ("privatekey", "private_key"),
    ("secretaccesskey", "cloud_access_key"),
    ("secret", "secret_field"),
    ("secretkey", "secret_field"),
    ("apikey", "secret_field"),
    ("accesstoken", "secret_field"),
    ("authtoken", "secret_field"),
    ("refreshtoken", "secret_field"),
];

fn key_kind(key: &str) -> Option<&'static str> {
    let norm: String = key
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect();
    KEY_SUFFIXES
        .iter()
        .find(|(suffix, _)| norm.ends_with(suffix))
        .map(|&(_, kind)| kind)
}

fn value_kind(s: &str) -> Option<&'static str> {
    if s.contains("-----BEGIN") && s.contains("PRIVATE KEY") {
        Some("private_key")
    } else if has_aws_key_id(s) {
        Some("cloud_access_key")
    } else if has_bearer(s) || has_platform_token(s) {
        Some("bearer_token")
    } else {
        None
    }
}

fn has_aws_key_id(s: &str) -> bool {
    s.split(|c: char| !c.is_ascii_alphanumeric()).any(|t| {
        t.len() == 20
            && (t.starts_with("AKIA") || t.starts_with("ASIA"))
            && t[4..]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    })
}

fn is_token68(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

fn has_bearer(s: &str) -> bool {
    let lower = s.to_ascii_lowercase(); // same byte offsets as `s`
    let bytes = lower.as_bytes();
    lower.match_indices("bearer ").any(|(at, _)| {
        if at > 0 && bytes[at - 1].is_ascii_alphanumeric() {
            return false;
        }
        let rest = lower[at + 7..].trim_start_matches(' ').as_bytes();
        let len = rest.iter().take_while(|&&b| is_token68(b)).count();
        let token = &rest[..len];
        len >= 20 || (len >= 8 && token.iter().any(|b| !b.is_ascii_alphabetic()))
    })
}

const TOKEN_PREFIXES: &[(&str, usize)] = &[
    ("ghp_", 20),
    ("gho_", 20),
    ("ghu_", 20),
    ("ghs_", 20),
    ("ghr_", 20),
    ("github_pat_", 20),
    ("xoxb-", 10),
    ("xoxp-", 10),
    ("xoxa-", 10),
    ("xoxr-", 10),
    ("xoxs-", 10),
    ("sk_live_", 10),
    ("rk_live_", 10),
];

fn has_platform_token(s: &str) -> bool {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .any(|t| {
            TOKEN_PREFIXES
                .iter()
                .any(|&(p, min)| t.len() >= p.len() + min && t.starts_with(p))
        })
}

#[cfg(test)]
mod tests {
    use super::super::{Category, CsvExport, EvidenceBundle, EvidenceRecord, FileEntry};
    use super::*;
    use serde_json::json;

    fn record(category: Category, data: Value) -> EvidenceRecord {
        EvidenceRecord {
            category,
            name: "evidence.json".into(),
            data: data.as_object().unwrap().clone(),
        }
    }

    /// Three ordinary records first, so paths index into the bundle rather than hitting `[0]`.
    fn with_third(data: Value) -> EvidenceBundle {
        let normal = || {
            record(
                Category::UsageReceipt,
                json!({"receipt_id": "usage_1", "token_count": 1200, "credits": 3}),
            )
        };
        EvidenceBundle {
            records: vec![normal(), normal(), record(Category::WorkOrder, data)],
            ..Default::default()
        }
    }

    /// Asserts the hit, and that neither Display nor Debug repeat the secret.
    fn assert_refused(bundle: &EvidenceBundle, field: &str, kind: &str, secret: &str) {
        let err = scan_for_secrets(bundle).expect_err("secret must be refused");
        assert_eq!((err.field.as_str(), err.kind), (field, kind));
        let shown = err.to_string();
        assert!(shown.contains(field) && shown.contains(kind), "{shown}");
        assert!(!shown.contains(secret), "secret echoed: {shown}");
        assert!(!format!("{err:?}").contains(secret));
    }

    #[test]
    fn nested_password_field() {
        let b = with_third(json!({"credentials": {"user": "ops", "password": "hunter2hunter2"}}));
        let path = "evidence.records[2].data.credentials.password";
        assert_refused(&b, path, "password_field", "hunter2hunter2");
    }

    #[test]
    fn secret_key_names_are_case_and_separator_insensitive() {
        let cases = [
            ("Client-Secret", "secret_field"),
            ("API_KEY", "secret_field"),
            ("x-api-key", "secret_field"),
            ("accessToken", "secret_field"),
            ("auth_token", "secret_field"),
            ("secret_key", "secret_field"),
            ("db_passwd", "password_field"),
            ("private_key", "private_key"),
            ("aws_secret_access_key", "cloud_access_key"),
        ];
        for (key, kind) in cases {
            let b = with_third(json!({"items": [{ (key): "s3cr3t-value-123" }]}));
            let path = format!("evidence.records[2].data.items[0].{key}");
            assert_refused(&b, &path, kind, "s3cr3t-value-123");
        }
    }

    #[test]
    fn secret_values_anywhere() {
        let pem =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        let cases = [
            (
                json!({"note": pem}),
                "note",
                "private_key",
                "MIIEowIBAAKCAQEA",
            ),
            (
                json!({"keys": ["x", "id=AKIAIOSFODNN7EXAMPLE;"]}),
                "keys[1]",
                "cloud_access_key",
                "AKIAIOSFODNN7EXAMPLE",
            ),
            (
                json!({"hdr": "ASIAY34FZKBOKMUTVV7A"}),
                "hdr",
                "cloud_access_key",
                "ASIAY34FZKBOKMUTVV7A",
            ),
            (
                json!({"auth": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"}),
                "auth",
                "bearer_token",
                "eyJhbGciOiJIUzI1NiJ9",
            ),
            (
                json!({"log": "GET / Authorization: bearer abc123def456"}),
                "log",
                "bearer_token",
                "abc123def456",
            ),
            (
                json!({"ci": "token ghp_16C7e42F292c6912E7710c838347Ae178B4a"}),
                "ci",
                "bearer_token",
                "16C7e42F292c6912E7710c838347Ae178B4a",
            ),
            (
                json!({"hook": "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"}),
                "hook",
                "bearer_token",
                "pdFZKVeTuE8sk7oOcBrzbqgy",
            ),
        ];
        for (data, rel, kind, secret) in cases {
            let path = format!("evidence.records[2].data.{rel}");
            assert_refused(&with_third(data), &path, kind, secret);
        }
    }

    #[test]
    fn csv_cells_names_and_manifest_entries() {
        let csv = |content: &str| EvidenceBundle {
            csv_exports: vec![
                CsvExport {
                    category: Category::UsageReceipt,
                    name: "ok.csv".into(),
                    content: "receipt_id,token_count\nu1,5\n".into(),
                },
                CsvExport {
                    category: Category::UsageReceipt,
                    name: "usage.csv".into(),
                    content: content.into(),
                },
            ],
            ..Default::default()
        };
        assert_refused(
            &csv("receipt_id,api_key\nu1,\nu2,\nu3,live-key-9f8e7d\n"),
            "evidence.csv_exports[1].content row 4 column api_key",
            "secret_field",
            "live-key-9f8e7d",
        );
        assert_refused(
            &csv("receipt_id,note\nu1,\"Bearer 0123456789abcdef\"\n"),
            "evidence.csv_exports[1].content row 2 column note",
            "bearer_token",
            "0123456789abcdef",
        );
        // Unparseable CSV is still scanned.
        assert_refused(
            &csv("a,b\n\"x\"y,AKIAIOSFODNN7EXAMPLE\n"),
            "evidence.csv_exports[1].content line 2",
            "cloud_access_key",
            "AKIAIOSFODNN7EXAMPLE",
        );
        let manifest = EvidenceBundle {
            file_manifest: vec![FileEntry {
                name: "AKIAIOSFODNN7EXAMPLE.txt".into(),
                media_type: "text/plain".into(),
                size: 1,
                sha256: "0".repeat(64),
            }],
            ..Default::default()
        };
        assert_refused(
            &manifest,
            "evidence.file_manifest[0].name",
            "cloud_access_key",
            "AKIAIOSFODNN7EXAMPLE",
        );
        let b = with_third(json!({"AKIAIOSFODNN7EXAMPLE": 1}));
        assert_refused(
            &b,
            "evidence.records[2].data (an object key)",
            "cloud_access_key",
            "AKIAIOSFODNN7EXAMPLE",
        );
    }

    #[test]
    fn ordinary_evidence_is_not_flagged() {
        let b = with_third(json!({
            "token_count": 1234,
            "invoice_token": "inv_demo_001",
            "settlement_reference": "stl_demo_20260602_001",
            "credits": 10,
            "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "digest_upper": "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "password": "",
            "secret": null,
            "has_secret": false,
            "api_key": {"rotated": false, "ids": []},
            "password_policy": "Bearer tokens are rotated daily",
            "notes": "bearer authentication; AKIAIOSFODNN7EXAMPLEXY is too long; akiaiosfodnn7example",
            "public_key": "-----BEGIN PUBLIC KEY-----",
            "skill": "ghp_short"
        }));
        assert_eq!(scan_for_secrets(&b), Ok(()));
        let csv = EvidenceBundle {
            csv_exports: vec![CsvExport {
                category: Category::UsageReceipt,
                name: "usage.csv".into(),
                content: "receipt_id,password,token_count\nu1,,12\n".into(),
            }],
            ..Default::default()
        };
        assert_eq!(scan_for_secrets(&csv), Ok(()));
    }
}
