//! Prefixed, opaque ids (`agent_…`, `run_…`). Parsing checks the prefix and the alphabet so an
//! id from a URL can be used as a key without further validation.

use crate::error::ApiError;

/// A new id: prefix + lower-case ULID (sortable, 26 chars, no ambiguity).
pub fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    )
}

/// The part after the prefix; per-run object ids reuse it so retries land on the same id.
pub fn suffix(id: &str) -> &str {
    id.split_once('_').map(|(_, s)| s).unwrap_or(id)
}

/// Longest part after the prefix an id may have (ids we mint carry 26; room for derived ids).
/// Anything longer is refused before it can reach the store, whose key-size limit would
/// otherwise answer (spec §7: unknown ids are 4xx, never 5xx).
pub const MAX_ID_SUFFIX: usize = 80;

/// Longest plain name (a provider, a schema object) a path may carry.
pub const MAX_NAME: usize = 64;

/// The id prefixes each id-carrying path or query parameter accepts; every `{param}` of
/// [`crate::http::ROUTES`] is either here or in [`NAME_PARAMS`] (a test holds the table to that).
pub const ID_PARAMS: &[(&str, &[&str])] = &[
    ("agent_id", &["agent"]),
    ("run_id", &["run"]),
    ("quote_id", &["quote"]),
    ("settlement_id", &["stl"]),
    ("credit_entitlement_id", &["cred"]),
    ("exception_id", &["exc", "replay"]),
    ("result_id", &["result", "rcontract"]),
    ("receipt_id", &["usage", "srcpt"]),
    ("attestation_id", &["att"]),
];

/// Parameters that are plain names (`[a-z0-9][a-z0-9_-]{0,63}`), not ids.
pub const NAME_PARAMS: &[&str] = &["provider", "object"];

fn id_suffix_ok(rest: &str) -> bool {
    !rest.is_empty()
        && rest.len() <= MAX_ID_SUFFIX
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Accepts `prefix_[a-z0-9_-]{1,80}`; anything else is a 404 for `field` (we never say which part was wrong).
pub fn parse_id(prefix: &str, raw: &str, field: &str) -> Result<String, ApiError> {
    parse_id_of(&[prefix], raw, field)
}

/// [`parse_id`] for a field that accepts ids of several kinds (`/receipts/{usage_…|srcpt_…}`).
pub fn parse_id_of(prefixes: &[&str], raw: &str, field: &str) -> Result<String, ApiError> {
    let ok = prefixes.iter().any(|prefix| {
        raw.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(id_suffix_ok)
    });
    if ok {
        Ok(raw.to_string())
    } else {
        Err(ApiError::not_found(field, raw))
    }
}

/// Checks a path or query parameter against the shape its name implies: the id kinds of
/// [`ID_PARAMS`], or a plain name for [`NAME_PARAMS`]. A parameter of neither kind must still be a
/// short token. Refusals are 404s naming the parameter, as for an unknown id.
pub fn check_param(name: &str, raw: &str) -> Result<(), ApiError> {
    if let Some((_, prefixes)) = ID_PARAMS.iter().find(|(n, _)| *n == name) {
        return parse_id_of(prefixes, raw, name).map(|_| ());
    }
    let name_ok = raw.len() <= MAX_NAME
        && raw
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if name_ok {
        Ok(())
    } else {
        Err(ApiError::not_found(name, raw))
    }
}

/// Per-run object id: `<prefix>_<run suffix>` (deterministic, so a retried stage writes the same object).
pub fn run_object_id(prefix: &str, run_id: &str) -> String {
    format!("{prefix}_{}", suffix(run_id))
}

pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Now in epoch milliseconds (leases, visibility and retry times kept as item numbers).
pub fn now_ms() -> i64 {
    (now().unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

pub fn now_rfc3339() -> String {
    rfc3339(now())
}

pub fn parse_rfc3339(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// A bearer secret (access key, claim token): 32 random bytes, base64url.
pub fn random_token(prefix: &str) -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_foreign_prefixes() {
        let id = new_id("run");
        assert!(id.starts_with("run_") && id.len() == 30);
        assert_eq!(parse_id("run", &id, "run_id").unwrap(), id);
        assert!(parse_id("run", "agent_01abc", "run_id").is_err());
        assert!(parse_id("run", "run_", "run_id").is_err());
        assert!(parse_id("run", "run_../x", "run_id").is_err());
        assert_eq!(run_object_id("usage", "run_abc"), "usage_abc");
    }

    #[test]
    fn ids_are_bounded_in_length_and_alphabet() {
        let max = format!("run_{}", "a".repeat(MAX_ID_SUFFIX));
        assert!(parse_id("run", &max, "run_id").is_ok());
        for bad in [
            format!("run_{}", "a".repeat(MAX_ID_SUFFIX + 1)),
            format!("run_{}", "a".repeat(3000)),
            "RUN_abc".into(),
            "run_ABC".into(),
            "run_a%2e".into(),
            "run_a b".into(),
            "run_é".into(),
            String::new(),
        ] {
            let e = parse_id("run", &bad, "run_id").unwrap_err();
            assert_eq!((e.status, e.field.as_deref()), (404, Some("run_id")));
        }
        let e = check_param("receipt_id", &format!("usage_{}", "a".repeat(2100))).unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (404, Some("receipt_id")));
        assert!(check_param("receipt_id", "srcpt_01abc").is_ok());
        assert!(check_param("receipt_id", "run_01abc").is_err());
        assert!(check_param("exception_id", "replay_01abc").is_ok());
        assert!(check_param("provider", "test_provider").is_ok());
        for bad in ["", "_x", "Test", "a/b", &"p".repeat(MAX_NAME + 1)] {
            let e = check_param("provider", bad).unwrap_err();
            assert_eq!((e.status, e.field.as_deref()), (404, Some("provider")));
        }
    }
}
