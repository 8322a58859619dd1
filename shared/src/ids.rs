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

/// Accepts `prefix_[a-z0-9_-]{1,80}`; anything else is a 404 for `field` (we never say which part was wrong).
pub fn parse_id(prefix: &str, raw: &str, field: &str) -> Result<String, ApiError> {
    let ok = raw.len() <= prefix.len() + 81
        && raw
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|rest| {
                !rest.is_empty()
                    && rest.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
            });
    if ok {
        Ok(raw.to_string())
    } else {
        Err(ApiError::not_found(field, raw))
    }
}

/// Per-run object id: `<prefix>_<run suffix>` (deterministic, so a retried stage writes the same object).
pub fn run_object_id(prefix: &str, run_id: &str) -> String {
    format!("{prefix}_{}", suffix(run_id))
}

pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
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
}
