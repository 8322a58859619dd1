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

/// Accepts an attestation object (`{"envelope": …, "statement": …}`) or a bare DSSE envelope;
/// keys as served by `GET /keys` (`{"keys": […]}`) or a list. The signature covers the envelope's
/// payload only, so the plain `statement` copy served beside it (which agents read) must equal
/// the decoded payload, or the attestation is rejected.
pub fn attestation(att_path: &str, keys_path: &str) -> Result<dsse::Statement, VerifyError> {
    let att = read_json(att_path)?;
    let copy = att.get("envelope").and(att.get("statement")).cloned();
    let env: dsse::Envelope =
        serde_json::from_value(att.get("envelope").cloned().unwrap_or(att))
            .map_err(|e| VerifyError::Invalid(format!("not a DSSE envelope: {e}")))?;
    let keys = read_json(keys_path)?;
    let keys: Vec<dsse::PublicKeyInfo> =
        serde_json::from_value(keys.get("keys").cloned().unwrap_or(keys))
            .map_err(|e| VerifyError::Invalid(format!("not a key list: {e}")))?;
    let statement = dsse::verify_envelope(&env, &keys)
        .map_err(|e| VerifyError::Invalid(format!("attestation rejected: {e}")))?;
    if let Some(copy) = copy {
        check_statement_copy(&env, &copy)?;
    }
    Ok(statement)
}

/// The plain copy equals the signed payload as JSON (member order and spacing aside).
fn check_statement_copy(env: &dsse::Envelope, copy: &Value) -> Result<(), VerifyError> {
    use base64::Engine as _;
    let signed: Option<Value> = base64::engine::general_purpose::STANDARD
        .decode(&env.payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok());
    if signed.as_ref() == Some(copy) {
        Ok(())
    } else {
        Err(VerifyError::Invalid(
            "attestation rejected: the plain statement differs from the signed envelope payload"
                .into(),
        ))
    }
}

/// Accepts a ledger export (`{"entries": […]}`) or a list of entries.
pub fn ledger_export(path: &str) -> Result<ledger::ChainReport, VerifyError> {
    let v = read_json(path)?;
    let entries: Vec<ledger::LedgerEntry> =
        serde_json::from_value(v.get("entries").cloned().unwrap_or(v))
            .map_err(|e| VerifyError::Invalid(format!("not a ledger export: {e}")))?;
    Ok(ledger::verify_chain(&entries))
}
