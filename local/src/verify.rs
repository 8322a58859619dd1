//! `tokenops verify`: offline verification of an attestation envelope (against the keys served by
//! `GET /keys`) and of a ledger export (`GET /ledger`), read from files
//! ([`tokenops::proof::verify`] does the checking).

use serde_json::Value;
use tokenops::proof::{dsse, ledger, verify};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}: {1}")]
    Read(String, String),
    #[error("{0}")]
    Invalid(String),
}

impl From<verify::Rejected> for VerifyError {
    fn from(r: verify::Rejected) -> Self {
        VerifyError::Invalid(r.0)
    }
}

fn read_json(path: &str) -> Result<Value, VerifyError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| VerifyError::Read(path.into(), e.to_string()))?;
    serde_json::from_str(&text)
        .map_err(|e| VerifyError::Read(path.into(), format!("not JSON: {e}")))
}

pub fn attestation(att_path: &str, keys_path: &str) -> Result<dsse::Statement, VerifyError> {
    Ok(verify::attestation(
        read_json(att_path)?,
        read_json(keys_path)?,
    )?)
}

pub fn ledger_export(path: &str) -> Result<ledger::ChainReport, VerifyError> {
    Ok(verify::ledger_export(read_json(path)?)?)
}
