//! Proof-object cryptography for verifiable receipts.
//!
//! Everything that gets hashed or signed goes through [`jcs`] first, so a
//! verifier in any language that implements RFC 8785 reproduces the same bytes.
//! [`ledger`] chains those digests per agent, [`dsse`] signs in-toto statements
//! about them through the [`signer`] port (a local key, or an Ed25519 key in AWS [`kms`]), and
//! [`webhook`] authenticates their delivery to customers.

pub mod dsse;
pub mod jcs;
pub mod ledger;
pub mod signer;
pub mod verify;
pub mod webhook;
