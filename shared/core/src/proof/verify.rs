//! Offline checks of what an agent holds: an attestation (against the keys `GET /keys` serves)
//! and a ledger export (`GET /ledger`). One implementation for every door: `tokenops verify`
//! reads them from files, the MCP tools from the API.

use serde_json::Value;

use super::{dsse, ledger};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

/// Accepts an attestation object (`{"envelope": …, "statement": …}`) or a bare DSSE envelope;
/// keys as served by `GET /keys` (`{"keys": […]}`) or a list. The signature covers the envelope's
/// payload only, so the plain `statement` copy served beside it (which agents read) must equal
/// the decoded payload, or the attestation is rejected.
pub fn attestation(att: Value, keys: Value) -> Result<dsse::Statement, Rejected> {
    let copy = att.get("envelope").and(att.get("statement")).cloned();
    let env: dsse::Envelope = serde_json::from_value(att.get("envelope").cloned().unwrap_or(att))
        .map_err(|e| Rejected(format!("not a DSSE envelope: {e}")))?;
    let keys: Vec<dsse::PublicKeyInfo> =
        serde_json::from_value(keys.get("keys").cloned().unwrap_or(keys))
            .map_err(|e| Rejected(format!("not a key list: {e}")))?;
    let statement = dsse::verify_envelope(&env, &keys)
        .map_err(|e| Rejected(format!("attestation rejected: {e}")))?;
    if let Some(copy) = copy {
        check_statement_copy(&env, &copy)?;
    }
    Ok(statement)
}

/// The plain copy equals the signed payload as JSON (member order and spacing aside).
fn check_statement_copy(env: &dsse::Envelope, copy: &Value) -> Result<(), Rejected> {
    use base64::Engine as _;
    let signed: Option<Value> = base64::engine::general_purpose::STANDARD
        .decode(&env.payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok());
    if signed.as_ref() == Some(copy) {
        Ok(())
    } else {
        Err(Rejected(
            "attestation rejected: the plain statement differs from the signed envelope payload"
                .into(),
        ))
    }
}

/// Accepts a ledger export (`{"entries": […]}`) or a list of entries.
pub fn ledger_export(export: Value) -> Result<ledger::ChainReport, Rejected> {
    let entries: Vec<ledger::LedgerEntry> =
        serde_json::from_value(export.get("entries").cloned().unwrap_or(export))
            .map_err(|e| Rejected(format!("not a ledger export: {e}")))?;
    Ok(ledger::verify_chain(&entries))
}
