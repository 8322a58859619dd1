//! The signing port: what signs attestations. Two adapters: the local key
//! ([`super::dsse::AttestationKey`], a seed the local plane keeps in its data dir) and AWS KMS
//! (`tokenops_aws::KmsSigner`, a non-exportable Ed25519 key). Both sign pure Ed25519 (RFC 8032)
//! over the bytes they are given, which for an attestation are the DSSE PAE
//! ([`super::dsse::sign_statement`]); both publish the same [`PublicKeyInfo`] shape that
//! `GET /keys` serves, so verification is the same offline whichever signed.
//!
//! The port is object-safe (`Arc<dyn Signer>` sits in the configuration of the one function
//! that signs): `sign` returns a boxed future.

use std::future::Future;
use std::pin::Pin;

use super::dsse::PublicKeyInfo;

/// A boxed signing future (one per attestation; the allocation is immaterial).
pub type SignFuture<'a> = Pin<Box<dyn Future<Output = Result<[u8; 64], SignError>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Transient: throttled, timed out, the service had an internal error. A retry may succeed.
    #[error("signer unavailable: {0}")]
    Unavailable(String),
    /// The signer refused: key disabled or pending deletion, access denied, wrong key usage.
    #[error("signer refused: {0}")]
    Refused(String),
    /// The key is not an Ed25519 signing key (or its public key is malformed).
    #[error("not an Ed25519 signing key: {0}")]
    BadKey(String),
    #[error("message of {len} bytes exceeds the signer's limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed signature from the signer: {0}")]
    Malformed(String),
    /// The signature does not verify with the public key the signer publishes: signing with it
    /// would produce attestations no one can verify against `GET /keys`.
    #[error("the signature does not verify with the signer's published public key")]
    Mismatch,
}

impl SignError {
    /// Worth retrying (the task is retried by the state machine).
    pub fn transient(&self) -> bool {
        matches!(self, SignError::Unavailable(_))
    }
}

/// Signs messages with one Ed25519 key.
pub trait Signer: Send + Sync {
    /// The public key as `GET /keys` serves it.
    fn public_key(&self) -> PublicKeyInfo;

    /// The DSSE `keyid` of the key (derived from the public key, see [`super::dsse::keyid_for`]).
    fn key_id(&self) -> String {
        self.public_key().keyid
    }

    /// A pure Ed25519 signature (64 bytes, R ‖ S) over `message`.
    fn sign<'a>(&'a self, message: &'a [u8]) -> SignFuture<'a>;
}
