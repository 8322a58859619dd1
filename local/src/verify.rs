//! `tokenops verify`: offline verification of an attestation envelope (against the keys served by
//! `GET /keys`) and of a ledger export (`GET /ledger`).

use serde_json::Value;
use tokenops::proof::{dsse, ledger};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}: {1}")]
    Read(String, String),
    #[error("{0}")]
    Invalid(String),
}

fn read_json(path: &str) -> Result<Value, VerifyError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| VerifyError::Read(path.into(), e.to_string()))?;
    serde_json::from_str(&text)
        .map_err(|e| VerifyError::Read(path.into(), format!("not JSON: {e}")))
}

/// Accepts an attestation object (`{"envelope": …}`) or a bare DSSE envelope; keys as served by
/// `GET /keys` (`{"keys": […]}`) or a list.
pub fn attestation(att_path: &str, keys_path: &str) -> Result<dsse::Statement, VerifyError> {
    let att = read_json(att_path)?;
    let env: dsse::Envelope =
        serde_json::from_value(att.get("envelope").cloned().unwrap_or(att))
            .map_err(|e| VerifyError::Invalid(format!("not a DSSE envelope: {e}")))?;
    let keys = read_json(keys_path)?;
    let keys: Vec<dsse::PublicKeyInfo> =
        serde_json::from_value(keys.get("keys").cloned().unwrap_or(keys))
            .map_err(|e| VerifyError::Invalid(format!("not a key list: {e}")))?;
    dsse::verify_envelope(&env, &keys)
        .map_err(|e| VerifyError::Invalid(format!("attestation rejected: {e}")))
}

/// Accepts a ledger export (`{"entries": […]}`) or a list of entries.
pub fn ledger_export(path: &str) -> Result<ledger::ChainReport, VerifyError> {
    let v = read_json(path)?;
    let entries: Vec<ledger::LedgerEntry> =
        serde_json::from_value(v.get("entries").cloned().unwrap_or(v))
            .map_err(|e| VerifyError::Invalid(format!("not a ledger export: {e}")))?;
    Ok(ledger::verify_chain(&entries))
}
