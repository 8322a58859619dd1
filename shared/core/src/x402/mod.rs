//! x402 v2 (HTTP 402 payments): TokenOps as a *resource server*. A route that needs credits
//! answers `402` with a `PAYMENT-REQUIRED` header saying what to pay; the client pays by sending
//! the request again with a `PAYMENT-SIGNATURE` header (an EIP-3009 authorization signed by the
//! payer); a *facilitator* (a URL in the configuration) verifies and settles it on chain, and the
//! settled payment funds a credit entitlement (provider `x402`).
//!
//! - this module: the wire types (x402 v2 `PaymentRequired`, `PaymentPayload`, the facilitator's
//!   requests and responses) and the configuration that prices credits in a token;
//! - [`facilitator`]: the facilitator port and its HTTP adapter (`POST /verify`, `POST /settle`);
//! - [`chain`]: the read-only chain port the reconciler asks whether a payment happened;
//! - [`pay`]: the money rules — verify before writing, one payment funds at most once, never
//!   credits without the transfer — and the reconciler of unknown settle outcomes.
//!
//! Only the `exact` scheme on EVM networks (`eip155:<chain id>`) with an EIP-3009 token is
//! accepted: that is what the official SDKs' facilitators settle without extra contracts.

pub mod chain;
pub mod facilitator;
pub mod pay;

use std::collections::BTreeMap;

use base64::Engine;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The provider name x402 payments fund entitlements under.
pub const X402: &str = "x402";
pub const SCHEME_EXACT: &str = "exact";
pub const X402_VERSION: u32 = 2;
/// Response header of a 402: base64 of the JSON [`PaymentRequired`].
pub const HEADER_REQUIRED: &str = "payment-required";
/// Request header of the paid retry: base64 of the JSON [`PaymentPayload`].
pub const HEADER_SIGNATURE: &str = "payment-signature";
/// Response header of a settled payment: base64 of the JSON [`SettleResponse`].
pub const HEADER_RESPONSE: &str = "payment-response";
/// The extension a client may send to key its payment besides the authorization's nonce.
pub const PAYMENT_IDENTIFIER: &str = "payment-identifier";

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// One way to pay (x402 v2 `PaymentRequirements`). `amount` is in the asset's atomic units.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    pub scheme: String,
    pub network: String,
    pub asset: String,
    pub amount: String,
    pub pay_to: String,
    pub max_timeout_seconds: u64,
    /// For `exact` on EVM: the token's EIP-712 domain `{name, version}`.
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// The body of the `PAYMENT-REQUIRED` header.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    pub x402_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub resource: ResourceInfo,
    pub accepts: Vec<PaymentRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<serde_json::Value>,
}

/// The body of the `PAYMENT-SIGNATURE` header.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    pub x402_version: u32,
    /// Scheme-specific; for `exact` on EVM an [`ExactEvmPayload`].
    pub payload: serde_json::Value,
    pub accepted: PaymentRequirements,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<serde_json::Value>,
}

/// EIP-3009 `transferWithAuthorization` arguments, as the `exact` EVM scheme carries them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExactAuthorization {
    pub from: String,
    pub to: String,
    pub value: String,
    pub valid_after: String,
    pub valid_before: String,
    pub nonce: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExactEvmPayload {
    pub signature: String,
    pub authorization: ExactAuthorization,
}

/// What `POST /verify` and `POST /settle` take.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest {
    pub x402_version: u32,
    pub payment_payload: PaymentPayload,
    pub payment_requirements: PaymentRequirements,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    pub is_valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
}

/// The facilitator's settle answer; also the body of the `PAYMENT-RESPONSE` header.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    #[serde(default)]
    pub transaction: String,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
}

/// The on-chain payment behind an x402-funded settlement: on the provider route, the settlement
/// receipt and the attestation, so proof of payment and proof of work travel together.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct X402Payment {
    pub scheme: String,
    /// CAIP-2, e.g. `eip155:8453`.
    pub network: String,
    pub asset: String,
    /// Token atomic units.
    pub amount: String,
    pub payer: String,
    pub pay_to: String,
    /// The EIP-3009 authorization nonce (0x + 64 hex): what keys the payment.
    pub nonce: String,
    /// The transfer's transaction hash once settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
}

/// An accepted way to pay, as the manifest and the quote show it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct PaymentMethod {
    pub provider: String,
    pub scheme: String,
    pub network: String,
    pub asset: String,
    pub pay_to: String,
    /// Token atomic units per credit.
    pub atomic_per_credit: String,
    /// For a quote: the price in atomic units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("x402 configuration: {name}: {reason}")]
pub struct X402ConfigError {
    pub name: &'static str,
    pub reason: String,
}

/// Where and how TokenOps is paid over x402. No secret: the facilitator holds the gas key, the
/// chain RPC is read-only.
#[derive(Clone, Debug, PartialEq)]
pub struct X402Config {
    pub facilitator_url: String,
    /// CAIP-2 `eip155:<chain id>`.
    pub network: String,
    /// The EIP-3009 token (checksummed or not; compared case-insensitively).
    pub asset: String,
    /// The token's EIP-712 domain name and version (`extra` of the requirements).
    pub asset_name: String,
    pub asset_version: String,
    /// Where payments go.
    pub pay_to: String,
    /// Token atomic units per credit (6-decimal USD token: 10000 = $0.01 a credit).
    pub atomic_per_credit: u64,
    /// Upper bound of `maxTimeoutSeconds` (also bounded by the quote's expiry).
    pub max_timeout_secs: u64,
    /// A JSON-RPC endpoint of the chain, read-only: the reconciler asks it whether an
    /// authorization was used and by which transaction.
    pub rpc_url: String,
    /// How long a facilitator call may take; past it a settle's outcome is unknown.
    pub timeout: std::time::Duration,
}

/// The environment variables [`X402Config::from_lookup`] reads (also the SAM parameters' targets).
pub const ENV: &[&str] = &[
    "X402_FACILITATOR_URL",
    "X402_NETWORK",
    "X402_ASSET",
    "X402_ASSET_NAME",
    "X402_ASSET_VERSION",
    "X402_PAY_TO",
    "X402_ATOMIC_PER_CREDIT",
    "X402_RPC_URL",
    "X402_MAX_TIMEOUT_SECS",
    "X402_TIMEOUT_MS",
];

fn is_address(s: &str) -> bool {
    s.len() == 42 && s.starts_with("0x") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn http_url(name: &'static str, v: String) -> Result<String, X402ConfigError> {
    match url::Url::parse(&v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(v.trim_end_matches('/').to_string())
        }
        _ => Err(X402ConfigError {
            name,
            reason: "must be an http(s) URL".into(),
        }),
    }
}

impl X402Config {
    /// From `X402_*` variables: `None` when `X402_FACILITATOR_URL` is unset or empty (x402 off);
    /// every other variable is then required (but the two with defaults).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, X402ConfigError> {
        let val = |n: &str| {
            get(n)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let Some(facilitator_url) = val("X402_FACILITATOR_URL") else {
            return Ok(None);
        };
        let need = |n: &'static str| {
            val(n).ok_or(X402ConfigError {
                name: n,
                reason: "required when X402_FACILITATOR_URL is set".into(),
            })
        };
        let network = need("X402_NETWORK")?;
        if !network
            .strip_prefix("eip155:")
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(X402ConfigError {
                name: "X402_NETWORK",
                reason: "must be eip155:<chain id>".into(),
            });
        }
        let address = |n: &'static str| {
            let v = need(n)?;
            if is_address(&v) {
                Ok(v)
            } else {
                Err(X402ConfigError {
                    name: n,
                    reason: "must be a 0x-prefixed 20-byte hex address".into(),
                })
            }
        };
        let number = |n: &'static str, default: Option<u64>| -> Result<u64, X402ConfigError> {
            match (val(n), default) {
                (Some(v), _) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or(X402ConfigError {
                        name: n,
                        reason: "must be a positive integer".into(),
                    }),
                (None, Some(d)) => Ok(d),
                (None, None) => need(n).map(|_| 0),
            }
        };
        Ok(Some(X402Config {
            facilitator_url: http_url("X402_FACILITATOR_URL", facilitator_url)?,
            network,
            asset: address("X402_ASSET")?,
            asset_name: need("X402_ASSET_NAME")?,
            asset_version: need("X402_ASSET_VERSION")?,
            pay_to: address("X402_PAY_TO")?,
            atomic_per_credit: number("X402_ATOMIC_PER_CREDIT", None)?,
            rpc_url: http_url("X402_RPC_URL", need("X402_RPC_URL")?)?,
            max_timeout_secs: number("X402_MAX_TIMEOUT_SECS", Some(300))?,
            timeout: std::time::Duration::from_millis(number("X402_TIMEOUT_MS", Some(30_000))?),
        }))
    }

    /// Credits in the token's atomic units.
    pub fn amount_for(&self, credits: i64) -> String {
        (credits.max(0) as u128 * self.atomic_per_credit as u128).to_string()
    }

    pub fn method(&self, credits: Option<i64>) -> PaymentMethod {
        PaymentMethod {
            provider: X402.into(),
            scheme: SCHEME_EXACT.into(),
            network: self.network.clone(),
            asset: self.asset.clone(),
            pay_to: self.pay_to.clone(),
            atomic_per_credit: self.atomic_per_credit.to_string(),
            amount: credits.map(|c| self.amount_for(c)),
        }
    }

    /// What to pay for `credits`, valid for at most `ttl_secs` (the quote's remaining life).
    pub fn requirements(&self, credits: i64, ttl_secs: i64) -> PaymentRequirements {
        PaymentRequirements {
            scheme: SCHEME_EXACT.into(),
            network: self.network.clone(),
            asset: self.asset.clone(),
            amount: self.amount_for(credits),
            pay_to: self.pay_to.clone(),
            max_timeout_seconds: (ttl_secs.max(1) as u64).min(self.max_timeout_secs),
            extra: serde_json::json!({"name": self.asset_name, "version": self.asset_version}),
        }
    }
}

/// The `PAYMENT-REQUIRED` body for one resource.
pub fn payment_required(
    resource_url: &str,
    description: &str,
    requirements: &PaymentRequirements,
    error: Option<&str>,
) -> PaymentRequired {
    PaymentRequired {
        x402_version: X402_VERSION,
        error: error.map(str::to_string),
        resource: ResourceInfo {
            url: resource_url.into(),
            description: Some(description.into()),
            mime_type: Some("application/json".into()),
        },
        accepts: vec![requirements.clone()],
        // Declared, not required: a client that sends an id gets its first outcome back for it.
        extensions: Some(serde_json::json!({
            PAYMENT_IDENTIFIER: {
                "info": {"required": false},
                "schema": {
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "object",
                    "properties": {
                        "required": {"type": "boolean"},
                        "id": {"type": "string", "minLength": 16, "maxLength": 128, "pattern": "^[a-zA-Z0-9_-]+$"}
                    },
                    "required": ["required"]
                }
            }
        })),
    }
}

/// Base64 (standard, padded) of a value's JSON: the encoding of all three x402 headers.
pub fn encode_header<T: Serialize>(value: &T) -> String {
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// A `PAYMENT-REQUIRED` or `PAYMENT-RESPONSE` value as JSON (`None` if it is not base64 JSON).
pub fn decode_header(value: &str) -> Option<serde_json::Value> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `PAYMENT-SIGNATURE` header decoded; the error says what is wrong, in words.
pub fn decode_payment(header: &str) -> Result<PaymentPayload, String> {
    let raw = header.trim();
    if raw.len() > 16 * 1024 {
        return Err("longer than 16 KiB".into());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(raw))
        .map_err(|_| "not base64".to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not an x402 PaymentPayload: {e}"))
}

/// The client's `payment-identifier` id, if it sent a well-formed one.
pub fn payment_identifier(p: &PaymentPayload) -> Option<String> {
    let id = p
        .extensions
        .as_ref()?
        .get(PAYMENT_IDENTIFIER)?
        .get("info")?
        .get("id")?
        .as_str()?;
    ((16..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| id.to_string())
}

/// Lower-case hex of a 0x value, for keys and comparisons.
pub fn lc(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// Header values of a settled payment, for a response.
pub fn response_headers(settle: &SettleResponse) -> BTreeMap<String, String> {
    BTreeMap::from([
        (HEADER_RESPONSE.to_string(), encode_header(settle)),
        (
            "access-control-expose-headers".to_string(),
            "PAYMENT-RESPONSE".to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const FULL: &[(&str, &str)] = &[
        ("X402_FACILITATOR_URL", "http://127.0.0.1:9/"),
        ("X402_NETWORK", "eip155:31337"),
        ("X402_ASSET", "0x5FbDB2315678afecb367f032d93F642f64180aa3"),
        ("X402_ASSET_NAME", "TokenOps Test Dollar"),
        ("X402_ASSET_VERSION", "1"),
        ("X402_PAY_TO", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"),
        ("X402_ATOMIC_PER_CREDIT", "10000"),
        ("X402_RPC_URL", "http://127.0.0.1:8545"),
    ];

    #[test]
    fn off_without_a_facilitator_and_complete_with_one() {
        assert_eq!(X402Config::from_lookup(env(&[])).unwrap(), None);
        let c = X402Config::from_lookup(env(FULL)).unwrap().unwrap();
        assert_eq!(c.facilitator_url, "http://127.0.0.1:9");
        assert_eq!(c.amount_for(25), "250000");
        assert_eq!(c.max_timeout_secs, 300);
        let r = c.requirements(25, 10_000);
        assert_eq!(r.max_timeout_seconds, 300);
        assert_eq!(c.requirements(25, 42).max_timeout_seconds, 42);
        assert_eq!(r.extra["name"], "TokenOps Test Dollar");
    }

    #[test]
    fn each_bad_setting_is_named() {
        for (name, bad) in [
            ("X402_NETWORK", "base"),
            ("X402_ASSET", "0x12"),
            ("X402_PAY_TO", "vitalik.eth"),
            ("X402_ATOMIC_PER_CREDIT", "0"),
            ("X402_RPC_URL", "ftp://x"),
            ("X402_FACILITATOR_URL", "not a url"),
        ] {
            let mut pairs: Vec<(&str, &str)> =
                FULL.iter().copied().filter(|(k, _)| *k != name).collect();
            pairs.push((name, bad));
            let e = X402Config::from_lookup(env(&pairs)).unwrap_err();
            assert_eq!(e.name, name, "{e}");
        }
        let missing: Vec<_> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| *k != "X402_ASSET_NAME")
            .collect();
        assert_eq!(
            X402Config::from_lookup(env(&missing)).unwrap_err().name,
            "X402_ASSET_NAME"
        );
    }

    #[test]
    fn headers_round_trip_and_junk_is_described() {
        let c = X402Config::from_lookup(env(FULL)).unwrap().unwrap();
        let p = PaymentPayload {
            x402_version: 2,
            payload: serde_json::json!({"signature": "0x00"}),
            accepted: c.requirements(1, 60),
            resource: None,
            extensions: Some(
                serde_json::json!({"payment-identifier": {"info": {"required": false, "id": "pay_0123456789abcdef"}}}),
            ),
        };
        let back = decode_payment(&encode_header(&p)).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            payment_identifier(&back).as_deref(),
            Some("pay_0123456789abcdef")
        );
        assert_eq!(decode_payment("%%%").unwrap_err(), "not base64");
        assert!(decode_payment(&encode_header(&serde_json::json!({"a": 1})))
            .unwrap_err()
            .starts_with("not an x402 PaymentPayload"));
    }
}
