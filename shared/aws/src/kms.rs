//! The AWS adapter of the signing port: an AWS KMS asymmetric key of key spec
//! `ECC_NIST_EDWARDS25519` (key usage `SIGN_VERIFY`). The private key never leaves KMS; the
//! attestation function's role may call `kms:Sign` and `kms:GetPublicKey` on it, nothing else.
//!
//! - Cold start ([`KmsSigner::connect`]): `GetPublicKey` returns the key's public half as a DER
//!   SubjectPublicKeyInfo, checked to be an Ed25519 signing key and converted to the raw 32
//!   bytes `GET /keys` serves ([`dsse::ed25519_from_spki_der`]).
//! - Signing: `Sign` with `SigningAlgorithm=ED25519_SHA_512` and `MessageType=RAW` — pure
//!   Ed25519 (RFC 8032) over the message itself, what DSSE verifiers expect. (KMS pairs
//!   `ED25519_SHA_512` with `RAW` only; `ED25519_PH_SHA_512` is HashEdDSA over a digest, which a
//!   standard Ed25519 verifier rejects.) A RAW message is at most 4096 bytes; an attestation's
//!   PAE is about 1.3 KB. KMS returns the 64-byte signature R ‖ S.

use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};

use tokenops::proof::dsse::{self, PublicKeyInfo};
use tokenops::proof::signer::{SignError, SignFuture, Signer};

/// KMS `Sign`'s limit on a `RAW` message.
pub const MAX_RAW_MESSAGE: usize = 4096;

/// Transient KMS errors (the others are refusals: disabled key, access denied, not found…).
const TRANSIENT: &[&str] = &[
    "KMSInternalException",
    "KeyUnavailableException",
    "DependencyTimeoutException",
    "ThrottlingException",
    "LimitExceededException",
];

fn sdk_err<E, R>(op: &str, e: SdkError<E, R>) -> SignError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let msg = format!("KMS {op}: {}", DisplayErrorContext(&e));
    match &e {
        SdkError::ServiceError(se) if !TRANSIENT.contains(&se.err().code().unwrap_or("")) => {
            SignError::Refused(msg)
        }
        // Throttling, 5xx, timeouts, connection failures.
        _ => SignError::Unavailable(msg),
    }
}

/// Signs with an Ed25519 KMS key; the public key is read once, at [`KmsSigner::connect`].
#[derive(Clone)]
pub struct KmsSigner {
    client: aws_sdk_kms::Client,
    /// The key's ARN as KMS reports it (the configured id may be an alias).
    key: String,
    public: PublicKeyInfo,
}

impl std::fmt::Debug for KmsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsSigner")
            .field("key", &self.key)
            .field("keyid", &self.public.keyid)
            .finish()
    }
}

impl KmsSigner {
    /// `key`: a key id, key ARN, alias name (`alias/…`) or alias ARN. Fails unless the key is an
    /// `ECC_NIST_EDWARDS25519` `SIGN_VERIFY` key offering `ED25519_SHA_512`.
    pub async fn connect(client: aws_sdk_kms::Client, key: &str) -> Result<Self, SignError> {
        let out = client
            .get_public_key()
            .key_id(key)
            .send()
            .await
            .map_err(|e| sdk_err("GetPublicKey", e))?;
        if out.key_spec() != Some(&KeySpec::EccNistEdwards25519) {
            return Err(SignError::BadKey(format!(
                "{key}: key spec {:?}, expected ECC_NIST_EDWARDS25519",
                out.key_spec().map(KeySpec::as_str)
            )));
        }
        if out.key_usage() != Some(&KeyUsageType::SignVerify) {
            return Err(SignError::BadKey(format!(
                "{key}: key usage {:?}, expected SIGN_VERIFY",
                out.key_usage().map(KeyUsageType::as_str)
            )));
        }
        if !out
            .signing_algorithms()
            .contains(&SigningAlgorithmSpec::Ed25519Sha512)
        {
            return Err(SignError::BadKey(format!(
                "{key}: ED25519_SHA_512 is not among its signing algorithms"
            )));
        }
        let der = out
            .public_key()
            .ok_or_else(|| SignError::BadKey(format!("{key}: no public key returned")))?;
        let raw = dsse::ed25519_from_spki_der(der.as_ref())
            .map_err(|e| SignError::BadKey(format!("{key}: {e}")))?;
        Ok(KmsSigner {
            key: out.key_id().unwrap_or(key).to_string(),
            client,
            public: PublicKeyInfo::from_raw(&raw),
        })
    }

    /// The KMS key's ARN.
    pub fn kms_key(&self) -> &str {
        &self.key
    }
}

impl Signer for KmsSigner {
    fn public_key(&self) -> PublicKeyInfo {
        self.public.clone()
    }

    fn sign<'a>(&'a self, message: &'a [u8]) -> SignFuture<'a> {
        Box::pin(async move {
            if message.len() > MAX_RAW_MESSAGE {
                return Err(SignError::TooLarge {
                    len: message.len(),
                    max: MAX_RAW_MESSAGE,
                });
            }
            let out = self
                .client
                .sign()
                .key_id(&self.key)
                .message(Blob::new(message))
                .message_type(MessageType::Raw)
                .signing_algorithm(SigningAlgorithmSpec::Ed25519Sha512)
                .send()
                .await
                .map_err(|e| sdk_err("Sign", e))?;
            let sig = out
                .signature()
                .ok_or_else(|| SignError::Malformed("no signature returned".into()))?;
            <[u8; 64]>::try_from(sig.as_ref()).map_err(|_| {
                SignError::Malformed(format!("{} bytes, expected 64", sig.as_ref().len()))
            })
        })
    }
}
