//! in-toto Statement v1 wrapped in a DSSE envelope, signed with Ed25519.
//!
//! DSSE signs `PAE(payloadType, payload)` rather than the payload alone, so a
//! signature cannot be replayed under a different type. Public keys are also
//! published as SPKI PEM so stock DSSE/in-toto/openssl tooling can verify.

use std::collections::BTreeMap;
use std::fmt;

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use ed25519_dalek::{Signature as EdSignature, Signer as _, SigningKey, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::jcs::{self, JcsError};
use super::signer::{SignError, SignFuture, Signer};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const KEY_ALG: &str = "ed25519";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw 32-byte key follows.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const PEM_END: &str = "-----END PUBLIC KEY-----";

#[derive(Debug, thiserror::Error)]
pub enum DsseError {
    #[error("payloadType is {0:?}, expected {PAYLOAD_TYPE:?}")]
    WrongPayloadType(String),
    #[error("{0} is not valid base64")]
    BadBase64(&'static str),
    #[error("no signature by a known keyid")]
    UnknownKey,
    #[error("signature invalid")]
    SignatureInvalid,
    #[error("payload is not an in-toto Statement v1: {0}")]
    NotAStatement(String),
    #[error("bad public key: {0}")]
    BadKey(&'static str),
    #[error(transparent)]
    Jcs(#[from] JcsError),
    #[error("signing: {0}")]
    Sign(#[from] SignError),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub type_: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: serde_json::Value,
}

impl Statement {
    /// A Statement v1 with `_type` filled in.
    pub fn new(subject: Vec<Subject>, predicate_type: &str, predicate: serde_json::Value) -> Self {
        Self {
            type_: STATEMENT_TYPE.to_owned(),
            subject,
            predicate_type: predicate_type.to_owned(),
            predicate,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Subject {
    pub name: String,
    /// Algorithm → lower-case hex, e.g. `{"sha256": "…"}`.
    pub digest: BTreeMap<String, String>,
}

impl Subject {
    pub fn sha256(name: &str, hex: &str) -> Self {
        Self {
            name: name.to_owned(),
            digest: BTreeMap::from([("sha256".to_owned(), hex.to_owned())]),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Envelope {
    /// Standard base64 of the statement bytes.
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<Signature>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Signature {
    pub keyid: String,
    /// Standard base64 of the 64-byte Ed25519 signature over the PAE.
    pub sig: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct PublicKeyInfo {
    pub keyid: String,
    /// Always `"ed25519"`.
    pub alg: String,
    /// Standard base64 of the 32 raw key bytes.
    pub public_key: String,
    /// SPKI PEM of the same key.
    pub public_key_pem: String,
}

impl PublicKeyInfo {
    /// Builds the published form of a raw Ed25519 public key.
    pub fn from_raw(raw: &[u8; 32]) -> Self {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(raw);
        Self {
            keyid: keyid_for(raw),
            alg: KEY_ALG.to_owned(),
            public_key: B64.encode(raw),
            public_key_pem: format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", B64.encode(der)),
        }
    }

    /// Parses an Ed25519 SPKI PEM (as written by [`PublicKeyInfo::from_raw`] or openssl).
    pub fn from_pem(pem: &str) -> Result<Self, DsseError> {
        let body = pem
            .trim()
            .strip_prefix(PEM_BEGIN)
            .and_then(|s| s.strip_suffix(PEM_END))
            .ok_or(DsseError::BadKey("not a PUBLIC KEY PEM"))?;
        let b64: String = body.split_whitespace().collect();
        let der = B64
            .decode(b64)
            .map_err(|_| DsseError::BadBase64("public_key_pem"))?;
        Ok(Self::from_raw(&ed25519_from_spki_der(&der)?))
    }

    fn verifying_key(&self) -> Result<VerifyingKey, DsseError> {
        if self.alg != KEY_ALG {
            return Err(DsseError::BadKey("alg is not ed25519"));
        }
        let raw = B64
            .decode(&self.public_key)
            .map_err(|_| DsseError::BadBase64("public_key"))?;
        let raw = <[u8; 32]>::try_from(raw.as_slice())
            .map_err(|_| DsseError::BadKey("public_key is not 32 bytes"))?;
        VerifyingKey::from_bytes(&raw).map_err(|_| DsseError::BadKey("not a curve point"))
    }
}

/// The raw 32-byte key of a DER Ed25519 SubjectPublicKeyInfo (RFC 8410 §4: the id-Ed25519
/// algorithm, 1.3.101.112, without parameters; the key as the BIT STRING's content). This is the
/// shape `openssl pkey -pubout -outform DER` writes and KMS `GetPublicKey` returns for an
/// `ECC_NIST_EDWARDS25519` key. Any other algorithm (X25519, Ed448, an EC point) or trailing byte
/// is refused.
pub fn ed25519_from_spki_der(der: &[u8]) -> Result<[u8; 32], DsseError> {
    der.strip_prefix(&SPKI_PREFIX)
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or(DsseError::BadKey("not an Ed25519 SubjectPublicKeyInfo"))
}

/// Key id: `"ed25519:"` + the first 16 hex chars (64 bits) of SHA-256 over the
/// raw 32-byte public key. Derived from the key, so it cannot drift from it and
/// any party can recompute it; 64 bits is ample to tell a handful of keys apart.
pub fn keyid_for(raw_public_key: &[u8; 32]) -> String {
    format!("ed25519:{}", &jcs::sha256_hex(raw_public_key)[..16])
}

/// Ed25519 signing key for attestations. Built from a caller-supplied 32-byte
/// seed so key generation and storage stay with the caller's RNG/KMS.
#[derive(Clone)]
pub struct AttestationKey(SigningKey);

impl AttestationKey {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    pub fn keyid(&self) -> String {
        keyid_for(self.0.verifying_key().as_bytes())
    }

    pub fn public_key(&self) -> PublicKeyInfo {
        PublicKeyInfo::from_raw(self.0.verifying_key().as_bytes())
    }
}

/// The local adapter of the signing port: signs in process with the seed's key.
impl Signer for AttestationKey {
    fn public_key(&self) -> PublicKeyInfo {
        AttestationKey::public_key(self)
    }

    fn sign<'a>(&'a self, message: &'a [u8]) -> SignFuture<'a> {
        let sig = self.0.sign(message).to_bytes();
        Box::pin(std::future::ready(Ok(sig)))
    }
}

/// Never prints secret material.
impl fmt::Debug for AttestationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AttestationKey")
            .field(&self.keyid())
            .finish()
    }
}

/// DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP len(type) SP type SP len(body) SP body`, lengths in ASCII decimal bytes.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Signs the JCS bytes of `st` (through the signing port, over the DSSE PAE), so the payload is
/// reproducible from the statement. The signature is checked against the signer's published key
/// before the envelope is returned: a signer whose key is not the one `GET /keys` serves (a
/// replaced KMS key, a misconfigured alias) fails here instead of storing an attestation that
/// cannot be verified.
pub async fn sign_statement(st: &Statement, signer: &dyn Signer) -> Result<Envelope, DsseError> {
    let payload = jcs::canonical_json(st)?;
    let message = pae(PAYLOAD_TYPE, &payload);
    let sig = signer.sign(&message).await?;
    let public = signer.public_key();
    public
        .verifying_key()?
        .verify_strict(&message, &EdSignature::from_bytes(&sig))
        .map_err(|_| SignError::Mismatch)?;
    Ok(Envelope {
        payload: B64.encode(&payload),
        payload_type: PAYLOAD_TYPE.to_owned(),
        signatures: vec![Signature {
            keyid: public.keyid,
            sig: B64.encode(sig),
        }],
    })
}

/// Accepts the envelope if any signature from a trusted key (matched by keyid)
/// verifies (strict Ed25519, rejecting malleable signatures); only then is the
/// payload parsed and checked to be a Statement v1 with at least one subject.
pub fn verify_envelope(env: &Envelope, keys: &[PublicKeyInfo]) -> Result<Statement, DsseError> {
    if env.payload_type != PAYLOAD_TYPE {
        return Err(DsseError::WrongPayloadType(env.payload_type.clone()));
    }
    let payload = B64
        .decode(&env.payload)
        .map_err(|_| DsseError::BadBase64("payload"))?;
    let message = pae(&env.payload_type, &payload);
    let mut known = false;
    let mut verified = false;
    for s in &env.signatures {
        let Some(k) = keys.iter().find(|k| k.keyid == s.keyid) else {
            continue;
        };
        known = true;
        let sig = B64
            .decode(&s.sig)
            .map_err(|_| DsseError::BadBase64("sig"))?;
        let Ok(sig) = EdSignature::from_slice(&sig) else {
            continue;
        };
        if k.verifying_key()?.verify_strict(&message, &sig).is_ok() {
            verified = true;
            break;
        }
    }
    match (known, verified) {
        (false, _) => return Err(DsseError::UnknownKey),
        (true, false) => return Err(DsseError::SignatureInvalid),
        _ => {}
    }
    let st: Statement =
        serde_json::from_slice(&payload).map_err(|e| DsseError::NotAStatement(e.to_string()))?;
    if st.type_ != STATEMENT_TYPE {
        return Err(DsseError::NotAStatement(format!("_type is {:?}", st.type_)));
    }
    if st.subject.is_empty() {
        return Err(DsseError::NotAStatement("no subject".into()));
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(b: u8) -> AttestationKey {
        AttestationKey::from_seed([b; 32])
    }

    fn statement() -> Statement {
        Statement::new(
            vec![Subject::sha256("receipt_1", &jcs::sha256_hex(b"receipt"))],
            "https://example.com/UsageReceipt/v1",
            json!({"credits": 42, "run_id": "run_1"}),
        )
    }

    #[test]
    fn pae_matches_dsse_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }

    #[tokio::test]
    async fn sign_verify_roundtrip() {
        let k = key(7);
        let env = sign_statement(&statement(), &k).await.unwrap();
        assert_eq!(env.payload_type, PAYLOAD_TYPE);
        assert_eq!(env.signatures[0].keyid, k.keyid());
        assert_eq!(
            B64.decode(&env.payload).unwrap(),
            jcs::canonical_json(&statement()).unwrap()
        );
        let got = verify_envelope(&env, &[key(9).public_key(), k.public_key()]).unwrap();
        assert_eq!(got, statement());
        // Wire names follow the in-toto / DSSE specs.
        let v = serde_json::to_value(&env).unwrap();
        assert!(v.get("payloadType").is_some());
        let p: serde_json::Value =
            serde_json::from_slice(&B64.decode(&env.payload).unwrap()).unwrap();
        assert_eq!(p["_type"], STATEMENT_TYPE);
        assert!(p.get("predicateType").is_some());
    }

    #[test]
    fn keyid_format() {
        let k = key(7);
        let id = k.keyid();
        assert!(id.starts_with("ed25519:"));
        assert_eq!(id.len(), "ed25519:".len() + 16);
        assert_ne!(id, key(8).keyid());
        assert_eq!(k.public_key().keyid, id);
        assert!(!format!("{k:?}").contains(&hex::encode([7u8; 32])));
    }

    #[tokio::test]
    async fn tampered_payload_rejected() {
        let k = key(7);
        let mut env = sign_statement(&statement(), &k).await.unwrap();
        let mut st = statement();
        st.subject[0]
            .digest
            .insert("sha256".into(), jcs::sha256_hex(b"other"));
        env.payload = B64.encode(jcs::canonical_json(&st).unwrap());
        assert!(matches!(
            verify_envelope(&env, &[k.public_key()]),
            Err(DsseError::SignatureInvalid)
        ));
    }

    #[tokio::test]
    async fn tampered_signature_rejected() {
        let k = key(7);
        let mut env = sign_statement(&statement(), &k).await.unwrap();
        let mut sig = B64.decode(&env.signatures[0].sig).unwrap();
        sig[10] ^= 1;
        env.signatures[0].sig = B64.encode(sig);
        assert!(matches!(
            verify_envelope(&env, &[k.public_key()]),
            Err(DsseError::SignatureInvalid)
        ));
        env.signatures[0].sig = "not base64!".into();
        assert!(matches!(
            verify_envelope(&env, &[k.public_key()]),
            Err(DsseError::BadBase64("sig"))
        ));
    }

    #[tokio::test]
    async fn unknown_keyid_rejected() {
        let env = sign_statement(&statement(), &key(7)).await.unwrap();
        assert!(matches!(
            verify_envelope(&env, &[key(8).public_key()]),
            Err(DsseError::UnknownKey)
        ));
        // A trusted keyid bound to a different key does not verify either.
        let mut impostor = key(8).public_key();
        impostor.keyid = key(7).keyid();
        assert!(matches!(
            verify_envelope(&env, &[impostor]),
            Err(DsseError::SignatureInvalid)
        ));
    }

    #[tokio::test]
    async fn wrong_payload_type_and_bad_payload_rejected() {
        let k = key(7);
        let mut env = sign_statement(&statement(), &k).await.unwrap();
        env.payload_type = "application/json".into();
        assert!(matches!(
            verify_envelope(&env, &[k.public_key()]),
            Err(DsseError::WrongPayloadType(_))
        ));
        env.payload_type = PAYLOAD_TYPE.into();
        env.payload = "%%%".into();
        assert!(matches!(
            verify_envelope(&env, &[k.public_key()]),
            Err(DsseError::BadBase64("payload"))
        ));
    }

    #[tokio::test]
    async fn validly_signed_non_statement_rejected() {
        let k = key(7);
        let mut st = statement();
        st.type_ = "https://in-toto.io/Statement/v0.1".into();
        let env = sign_statement(&st, &k).await.unwrap();
        assert!(matches!(
            verify_envelope(&env, &[k.public_key()]),
            Err(DsseError::NotAStatement(_))
        ));
    }

    #[tokio::test]
    async fn pem_roundtrip_verifies() {
        let k = key(7);
        let info = k.public_key();
        assert!(info
            .public_key_pem
            .starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"));
        assert!(info
            .public_key_pem
            .ends_with("\n-----END PUBLIC KEY-----\n"));
        let from_pem = PublicKeyInfo::from_pem(&info.public_key_pem).unwrap();
        assert_eq!(from_pem, info);
        let env = sign_statement(&statement(), &k).await.unwrap();
        assert_eq!(verify_envelope(&env, &[from_pem]).unwrap(), statement());
        assert!(PublicKeyInfo::from_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
        )
        .is_err());
    }

    #[test]
    fn parses_openssl_generated_pem() {
        // `openssl genpkey -algorithm ed25519 | openssl pkey -pubout`
        let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAQlq9kOKyEP5NTTjVScoFQg6p+xcYR8dRS+xT21VI1nc=\n-----END PUBLIC KEY-----\n";
        let info = PublicKeyInfo::from_pem(pem).unwrap();
        assert_eq!(info.public_key_pem, pem);
        assert_eq!(B64.decode(&info.public_key).unwrap().len(), 32);
    }

    /// RFC 8410 §10.1: the example Ed25519 public key, as a DER SubjectPublicKeyInfo (the shape
    /// KMS `GetPublicKey` returns for an `ECC_NIST_EDWARDS25519` key) → its raw 32 bytes.
    #[test]
    fn spki_der_to_raw_on_the_rfc8410_example() {
        let der = B64
            .decode("MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=")
            .unwrap();
        assert_eq!(der.len(), 44);
        assert_eq!(
            hex::encode(ed25519_from_spki_der(&der).unwrap()),
            "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
        );
        // Trailing or missing bytes, X25519's OID (1.3.101.110) and an EC P-256 SPKI are refused.
        let mut long = der.clone();
        long.push(0);
        assert!(ed25519_from_spki_der(&long).is_err());
        assert!(ed25519_from_spki_der(&der[..43]).is_err());
        let mut x25519 = der.clone();
        x25519[8] = 0x6e;
        assert!(ed25519_from_spki_der(&x25519).is_err());
        let p256 = B64
            .decode("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEIqfnyzQE99FbFhJXjHlNUMH+A+iriQ7wuNtkukNnqRJZ4EvfPc7f9NJCSRaeloWQu9GBoSU6Zo4MAaKGsK57Lw==")
            .unwrap();
        assert!(ed25519_from_spki_der(&p256).is_err());
    }

    /// The port's contract on the local adapter: the signature over the PAE verifies with the
    /// public key the signer publishes (what `GET /keys` serves), under the keyid it names.
    #[tokio::test]
    async fn local_signer_signs_what_its_published_key_verifies() {
        let k = key(7);
        let signer: &dyn Signer = &k;
        let published = signer.public_key();
        assert_eq!(signer.key_id(), published.keyid);
        let env = sign_statement(&statement(), signer).await.unwrap();
        assert_eq!(env.signatures[0].keyid, published.keyid);
        assert_eq!(verify_envelope(&env, &[published]).unwrap(), statement());
        let sig = signer.sign(b"message").await.unwrap();
        let vk = VerifyingKey::from_bytes(&k.0.verifying_key().to_bytes()).unwrap();
        assert!(vk
            .verify_strict(b"message", &EdSignature::from_bytes(&sig))
            .is_ok());
    }

    /// A signer whose signatures do not match the key it publishes is caught before an envelope
    /// exists (a KMS key swapped under the configured id would otherwise sign unverifiably).
    #[tokio::test]
    async fn signer_publishing_another_key_is_refused() {
        struct Swapped(AttestationKey, AttestationKey);
        impl Signer for Swapped {
            fn public_key(&self) -> PublicKeyInfo {
                self.1.public_key()
            }
            fn sign<'a>(&'a self, message: &'a [u8]) -> SignFuture<'a> {
                Signer::sign(&self.0, message)
            }
        }
        let e = sign_statement(&statement(), &Swapped(key(7), key(8)))
            .await
            .unwrap_err();
        assert!(matches!(e, DsseError::Sign(SignError::Mismatch)), "{e}");
        let honest = Swapped(key(7), key(7));
        assert!(sign_statement(&statement(), &honest).await.is_ok());
    }

    #[test]
    fn rfc8032_test_vector_1_public_key() {
        // RFC 8032 §7.1 TEST 1: seed → public key.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let info = AttestationKey::from_seed(seed).public_key();
        assert_eq!(
            hex::encode(B64.decode(info.public_key).unwrap()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }
}
