//! RFC 8785 (JCS) canonical JSON and SHA-256 digests over it.
//!
//! Digests are only comparable across systems if every party hashes the same
//! bytes, so nothing in this crate hashes `serde_json::to_vec` output directly.
//! Note: integers are written verbatim; keep values that other verifiers must
//! reproduce within ±2^53, the range RFC 8785 (IEEE-754 doubles) can represent.

use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum JcsError {
    /// The value could not be serialized (e.g. NaN, or a map with non-string keys).
    #[error("cannot canonicalize value: {0}")]
    Canonicalize(#[from] serde_json::Error),
}

/// Serializes `v` to its RFC 8785 canonical UTF-8 bytes.
pub fn canonical_json<T: Serialize>(v: &T) -> Result<Vec<u8>, JcsError> {
    Ok(serde_json_canonicalizer::to_vec(v)?)
}

/// Lower-case hex SHA-256, the digest encoding used throughout (in-toto `sha256`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 hex of the canonical JSON of `v`: the identity of a proof object.
pub fn digest<T: Serialize>(v: &T) -> Result<String, JcsError> {
    Ok(sha256_hex(&canonical_json(v)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn canon_str(src: &str) -> String {
        let v: Value = serde_json::from_str(src).unwrap();
        String::from_utf8(canonical_json(&v).unwrap()).unwrap()
    }

    #[test]
    fn sorts_keys_and_normalizes_numbers() {
        assert_eq!(
            canon_str(r#"{"b":1,"a":[1e1, 0.000001]}"#),
            r#"{"a":[10,0.000001],"b":1}"#
        );
    }

    #[test]
    fn rfc8785_number_serialization() {
        // Values from RFC 8785 §3.2.2.3 / appendix B.
        assert_eq!(
            canon_str("[333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001, -0]"),
            "[333333333.3333333,1e+30,4.5,0.002,1e-27,0]"
        );
    }

    #[test]
    fn rfc8785_sorts_by_utf16_code_units() {
        // RFC 8785 §3.2.3: the emoji (surrogate 0xD83D) sorts before U+FB33.
        let src = r#"{"\u20ac":"Euro","\r":"CR","\ufb33":"Dalet","1":"One","\ud83d\ude00":"Emoji","\u0080":"Control","\u00f6":"o-umlaut"}"#;
        let out = canon_str(src);
        let order: Vec<usize> = ["CR", "One", "Control", "o-umlaut", "Euro", "Emoji", "Dalet"]
            .iter()
            .map(|name| out.find(&format!("\"{name}\"")).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");
    }

    #[test]
    fn escapes_minimally() {
        assert_eq!(
            canon_str(r#"{"s":"\u20ac\u000f\n\"\\\/"}"#),
            "{\"s\":\"€\\u000f\\n\\\"\\\\/\"}"
        );
    }

    #[test]
    fn digest_is_independent_of_key_order() {
        let a = json!({"x": 1, "y": {"b": [1, 2], "a": "s"}});
        let b: Value = serde_json::from_str(r#"{"y":{"a":"s","b":[1,2]},"x":1.0}"#).unwrap();
        assert_eq!(digest(&a).unwrap(), digest(&b).unwrap());
        assert_eq!(digest(&a).unwrap().len(), 64);
        assert_ne!(digest(&a).unwrap(), digest(&json!({"x": 2})).unwrap());
    }

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
