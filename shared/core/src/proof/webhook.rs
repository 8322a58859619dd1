//! Standard Webhooks (standardwebhooks.com) signing and verification.
//!
//! Following the spec rather than inventing a scheme lets receivers use any
//! off-the-shelf Standard Webhooks library to authenticate our deliveries.

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
pub const SECRET_PREFIX: &str = "whsec_";
/// The spec's recommended replay window (5 minutes).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("webhook secret is not whsec_<base64>")]
    BadSecret,
    #[error("webhook timestamp is outside the tolerance window")]
    TimestampOutOfTolerance,
    #[error("no matching webhook signature")]
    NoMatchingSignature,
}

/// Formats caller-supplied random bytes as a `whsec_` secret (24 bytes, as the
/// reference libraries generate).
pub fn new_secret(raw: [u8; 24]) -> String {
    format!("{SECRET_PREFIX}{}", B64.encode(raw))
}

/// Like the reference libraries, accepts the secret with or without `whsec_`.
fn secret_key(secret: &str) -> Result<Vec<u8>, WebhookError> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    match B64.decode(b64) {
        Ok(k) if !k.is_empty() => Ok(k),
        _ => Err(WebhookError::BadSecret),
    }
}

fn mac(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(format!("{msg_id}.{timestamp}.").as_bytes());
    m.update(body);
    m.finalize().into_bytes().into()
}

/// `webhook-signature` value: `v1,<base64 HMAC-SHA256("{msg_id}.{timestamp}.{body}")>`.
pub fn sign(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, WebhookError> {
    let key = secret_key(secret)?;
    Ok(format!(
        "v1,{}",
        B64.encode(mac(&key, msg_id, timestamp, body))
    ))
}

/// Checks the timestamp window first (cheap replay guard), then accepts if any
/// space-separated `v1,` signature matches in constant time; other versions are
/// ignored so keys/schemes can rotate. A negative tolerance accepts only `now`.
pub fn verify(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), WebhookError> {
    let key = secret_key(secret)?;
    if now.abs_diff(timestamp) > tolerance_secs.max(0).unsigned_abs() {
        return Err(WebhookError::TimestampOutOfTolerance);
    }
    let expected = mac(&key, msg_id, timestamp, body);
    let matched = signature_header
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| B64.decode(b64).ok())
        .any(|sig| bool::from(sig.ct_eq(&expected)));
    matched
        .then_some(())
        .ok_or(WebhookError::NoMatchingSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test vector published by the Standard Webhooks spec / reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn check(secret: &str, header: &str, body: &[u8], now: i64) -> Result<(), WebhookError> {
        verify(
            secret,
            MSG_ID,
            TS,
            header,
            body,
            now,
            DEFAULT_TOLERANCE_SECS,
        )
    }

    #[test]
    fn reproduces_spec_vector() {
        assert_eq!(sign(SECRET, MSG_ID, TS, BODY).unwrap(), SIG);
        assert_eq!(check(SECRET, SIG, BODY, TS), Ok(()));
        // The prefix is optional on input, as in the reference libraries.
        assert_eq!(check(&SECRET[SECRET_PREFIX.len()..], SIG, BODY, TS), Ok(()));
    }

    #[test]
    fn tampered_body_fails() {
        let body = br#"{"test": 2432232315}"#;
        assert_eq!(
            check(SECRET, SIG, body, TS),
            Err(WebhookError::NoMatchingSignature)
        );
    }

    #[test]
    fn wrong_secret_fails() {
        let other = new_secret([1; 24]);
        assert_eq!(
            check(&other, SIG, BODY, TS),
            Err(WebhookError::NoMatchingSignature)
        );
        assert_eq!(
            check("whsec_!!", SIG, BODY, TS),
            Err(WebhookError::BadSecret)
        );
        assert_eq!(
            sign("whsec_", MSG_ID, TS, BODY),
            Err(WebhookError::BadSecret)
        );
    }

    #[test]
    fn timestamp_outside_tolerance_fails() {
        assert_eq!(check(SECRET, SIG, BODY, TS + 300), Ok(()));
        assert_eq!(check(SECRET, SIG, BODY, TS - 300), Ok(()));
        let stale = Err(WebhookError::TimestampOutOfTolerance);
        assert_eq!(check(SECRET, SIG, BODY, TS + 301), stale);
        assert_eq!(check(SECRET, SIG, BODY, TS - 301), stale);
        assert_eq!(check(SECRET, SIG, BODY, i64::MAX), stale);
    }

    #[test]
    fn any_of_several_signatures_passes() {
        let wrong = sign(&new_secret([2; 24]), MSG_ID, TS, BODY).unwrap();
        assert_eq!(check(SECRET, &format!("{wrong} {SIG}"), BODY, TS), Ok(()));
        assert_eq!(check(SECRET, &format!("v1a,abc {SIG}"), BODY, TS), Ok(()));
        assert_eq!(
            check(SECRET, &format!("{wrong} v1,not-base64"), BODY, TS),
            Err(WebhookError::NoMatchingSignature)
        );
        assert_eq!(
            check(SECRET, "", BODY, TS),
            Err(WebhookError::NoMatchingSignature)
        );
        // A truncated signature must not match by prefix.
        assert_eq!(
            check(SECRET, &SIG[..20], BODY, TS),
            Err(WebhookError::NoMatchingSignature)
        );
    }

    #[test]
    fn new_secret_roundtrips() {
        let s = new_secret([0xAB; 24]);
        assert!(s.starts_with(SECRET_PREFIX));
        assert_eq!(secret_key(&s).unwrap(), vec![0xAB; 24]);
        let h = sign(&s, "msg_1", 10, b"{}").unwrap();
        assert_eq!(verify(&s, "msg_1", 10, &h, b"{}", 10, 0), Ok(()));
        assert_eq!(
            verify(&s, "msg_2", 10, &h, b"{}", 10, 0),
            Err(WebhookError::NoMatchingSignature)
        );
    }
}
