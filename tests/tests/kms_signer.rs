//! The KMS adapter of the signing port (`tokenops_aws::kms::KmsSigner`) through the real
//! `aws-sdk-kms` client, against a stand-in KMS endpoint.
//!
//! Why a stand-in: moto (the emulator plane's upstream, 5.2.5, the latest release) has no
//! `ECC_NIST_EDWARDS25519` keys — its KMS creates RSA/ECDSA/HMAC/SM2 keys only — so nothing here
//! can run the adapter against a KMS implementation. The stand-in below speaks KMS's wire protocol
//! (JSON 1.1, `X-Amz-Target: TrentService.<Operation>`) for `GetPublicKey` and `Sign` as the KMS
//! API reference documents them for Ed25519 keys, signs with a local Ed25519 key, and records
//! every request so the tests can check what the adapter asked for. It proves the adapter's
//! requests and parsing match that reading of the API; it cannot prove AWS agrees.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use tokenops::proof::dsse::{self, AttestationKey, DsseError, Statement, Subject};
use tokenops::proof::signer::{SignError, Signer};
use tokenops_aws::kms::{KmsSigner, MAX_RAW_MESSAGE};

const KEY_ARN: &str = "arn:aws:kms:us-east-1:123456789012:key/0d5f3a52-7c35-4a3e-9d62-1c2d3e4f5a6b";
const ALIAS: &str = "alias/tokenops-attestation";

#[derive(Clone)]
struct FakeKms {
    /// The key GetPublicKey describes.
    published: AttestationKey,
    /// The key Sign signs with (another one simulates a key swapped under the same id).
    signing: AttestationKey,
    key_spec: &'static str,
    /// An error `__type` every Sign answers with, if set.
    sign_error: Option<&'static str>,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
}

impl FakeKms {
    fn new(seed: u8) -> Self {
        FakeKms {
            published: AttestationKey::from_seed([seed; 32]),
            signing: AttestationKey::from_seed([seed; 32]),
            key_spec: "ECC_NIST_EDWARDS25519",
            sign_error: None,
            requests: Arc::default(),
        }
    }

    fn requests(&self, op: &str) -> Vec<Value> {
        let all = self.requests.lock().unwrap();
        all.iter()
            .filter(|(o, _)| o == op)
            .map(|(_, b)| b.clone())
            .collect()
    }

    async fn start(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(kms).with_state(self);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
}

fn error(status: StatusCode, kind: &str) -> Response {
    (
        status,
        [("content-type", "application/x-amz-json-1.1")],
        json!({"__type": kind, "message": format!("stand-in {kind}")}).to_string(),
    )
        .into_response()
}

async fn kms(State(k): State<FakeKms>, headers: HeaderMap, body: String) -> Response {
    let op = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("TrentService."))
        .unwrap_or_default()
        .to_string();
    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    k.requests.lock().unwrap().push((op.clone(), req.clone()));
    let known = |id: &Value| id == KEY_ARN || id == ALIAS;
    if !known(&req["KeyId"]) {
        return error(StatusCode::BAD_REQUEST, "NotFoundException");
    }
    let out = match op.as_str() {
        "GetPublicKey" => {
            let der = spki_der(&k.published);
            json!({
                "KeyId": KEY_ARN,
                "PublicKey": B64.encode(der),
                "KeySpec": k.key_spec,
                "CustomerMasterKeySpec": k.key_spec,
                "KeyUsage": "SIGN_VERIFY",
                "SigningAlgorithms": ["ED25519_SHA_512", "ED25519_PH_SHA_512"],
            })
        }
        "Sign" => {
            if let Some(e) = k.sign_error {
                return error(StatusCode::BAD_REQUEST, e);
            }
            // Pure Ed25519 only: ED25519_SHA_512 with MessageType RAW (KMS refuses other pairs).
            if req["SigningAlgorithm"] != "ED25519_SHA_512" || req["MessageType"] != "RAW" {
                return error(StatusCode::BAD_REQUEST, "ValidationException");
            }
            let msg = B64.decode(req["Message"].as_str().unwrap_or("")).unwrap();
            if msg.len() > MAX_RAW_MESSAGE {
                return error(StatusCode::BAD_REQUEST, "ValidationException");
            }
            let sig = Signer::sign(&k.signing, &msg).await.unwrap();
            json!({"KeyId": KEY_ARN, "Signature": B64.encode(sig), "SigningAlgorithm": "ED25519_SHA_512"})
        }
        _ => return error(StatusCode::BAD_REQUEST, "UnknownOperationException"),
    };
    (
        [("content-type", "application/x-amz-json-1.1")],
        out.to_string(),
    )
        .into_response()
}

/// The DER SubjectPublicKeyInfo of a key (what KMS GetPublicKey returns), from its PEM.
fn spki_der(k: &AttestationKey) -> Vec<u8> {
    let pem = k.public_key().public_key_pem;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    B64.decode(b64).unwrap()
}

fn client(endpoint: &str) -> aws_sdk_kms::Client {
    use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
    aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .build(),
    )
}

/// A statement shaped like stage 14's, ids and digests at full length.
fn statement() -> Statement {
    let run = format!("run_{}", ulid::Ulid::new());
    let sfx = &run[4..];
    let digest = "ab".repeat(32);
    let subject = [
        "tokenops_result_package:res",
        "result_contract:rc",
        "tokenops_usage_receipt:ur",
        "settlement_receipt:sr",
        "ledger_head:ledger",
    ]
    .iter()
    .map(|n| Subject::sha256(&format!("{n}_{sfx}"), &digest))
    .collect();
    Statement::new(
        subject,
        attestation::PREDICATE_TYPE,
        json!({
            "run_id": run, "agent_id": format!("agt_{}", ulid::Ulid::new()),
            "loop_type": "agent_task", "path": tokenops::model::PATH, "state": "callback_delivered",
            "credits": 1_000_000, "attested_at": "2026-01-01T00:00:00.000000000Z"
        }),
    )
}

#[tokio::test]
async fn kms_signed_attestation_verifies_offline_with_the_served_key() {
    let kms = FakeKms::new(42);
    let endpoint = kms.clone().start().await;
    // An alias is resolved to the key's ARN, which then names the key in every Sign.
    let signer = KmsSigner::connect(client(&endpoint), ALIAS).await.unwrap();
    assert_eq!(signer.kms_key(), KEY_ARN);
    // GET /keys would serve exactly the KMS key's public key, raw 32 bytes + SPKI PEM.
    let served = signer.public_key();
    assert_eq!(served, AttestationKey::from_seed([42; 32]).public_key());
    assert_eq!(signer.key_id(), served.keyid);

    let st = statement();
    let env = dsse::sign_statement(&st, &signer).await.unwrap();
    let signs = kms.requests("Sign");
    assert_eq!(signs.len(), 1);
    assert_eq!(signs[0]["KeyId"], KEY_ARN);
    assert_eq!(signs[0]["SigningAlgorithm"], "ED25519_SHA_512");
    assert_eq!(signs[0]["MessageType"], "RAW");
    // KMS signs the DSSE PAE of the payload, nothing else.
    let payload = B64.decode(&env.payload).unwrap();
    let pae = dsse::pae(dsse::PAYLOAD_TYPE, &payload);
    assert_eq!(
        B64.decode(signs[0]["Message"].as_str().unwrap()).unwrap(),
        pae
    );
    assert!(
        pae.len() < MAX_RAW_MESSAGE / 2,
        "an attestation's PAE ({} bytes) stays well inside KMS's RAW limit",
        pae.len()
    );

    // Offline, as `tokenops verify attestation ATT KEYS` does: files only, no KMS.
    let dir = std::env::temp_dir().join(format!("tokenops-kms-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let att = dir.join("attestation.json");
    let keys = dir.join("keys.json");
    std::fs::write(
        &att,
        serde_json::to_vec(&json!({"envelope": env, "statement": st})).unwrap(),
    )
    .unwrap();
    std::fs::write(
        &keys,
        serde_json::to_vec(&json!({"keys": [served]})).unwrap(),
    )
    .unwrap();
    let verified =
        tokenops_local::verify::attestation(att.to_str().unwrap(), keys.to_str().unwrap()).unwrap();
    assert_eq!(verified, st);
    // Another key does not verify it.
    std::fs::write(
        &keys,
        serde_json::to_vec(&json!({"keys": [AttestationKey::from_seed([43; 32]).public_key()]}))
            .unwrap(),
    )
    .unwrap();
    assert!(
        tokenops_local::verify::attestation(att.to_str().unwrap(), keys.to_str().unwrap()).is_err()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_key_that_is_not_ed25519_is_refused_at_cold_start() {
    let mut kms = FakeKms::new(42);
    kms.key_spec = "ECC_NIST_P256";
    let endpoint = kms.start().await;
    let e = KmsSigner::connect(client(&endpoint), KEY_ARN)
        .await
        .unwrap_err();
    assert!(matches!(e, SignError::BadKey(_)), "{e}");
    // An unknown key is a refusal (not retried).
    let endpoint = FakeKms::new(42).start().await;
    let e = KmsSigner::connect(client(&endpoint), "alias/other")
        .await
        .unwrap_err();
    assert!(matches!(e, SignError::Refused(_)), "{e}");
}

#[tokio::test]
async fn sign_failures_are_typed_and_a_swapped_key_is_caught() {
    // Throttled: transient (the state machine retries the task).
    let mut kms = FakeKms::new(42);
    kms.sign_error = Some("ThrottlingException");
    let signer = KmsSigner::connect(client(&kms.start().await), KEY_ARN)
        .await
        .unwrap();
    let e = dsse::sign_statement(&statement(), &signer)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DsseError::Sign(s @ SignError::Unavailable(_)) if s.transient()),
        "{e}"
    );
    // Disabled key: a refusal, not retried.
    let mut kms = FakeKms::new(42);
    kms.sign_error = Some("DisabledException");
    let signer = KmsSigner::connect(client(&kms.start().await), KEY_ARN)
        .await
        .unwrap();
    let e = dsse::sign_statement(&statement(), &signer)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DsseError::Sign(s @ SignError::Refused(_)) if !s.transient()),
        "{e}"
    );
    // Signatures by a key other than the published one never become an envelope.
    let mut kms = FakeKms::new(42);
    kms.signing = AttestationKey::from_seed([7; 32]);
    let signer = KmsSigner::connect(client(&kms.start().await), KEY_ARN)
        .await
        .unwrap();
    let e = dsse::sign_statement(&statement(), &signer)
        .await
        .unwrap_err();
    assert!(matches!(e, DsseError::Sign(SignError::Mismatch)), "{e}");
    // Over KMS's RAW limit: refused before any request.
    let kms = FakeKms::new(42);
    let signer = KmsSigner::connect(client(&kms.clone().start().await), KEY_ARN)
        .await
        .unwrap();
    let e = signer
        .sign(&vec![0u8; MAX_RAW_MESSAGE + 1])
        .await
        .unwrap_err();
    assert!(matches!(e, SignError::TooLarge { .. }), "{e}");
    assert!(kms.requests("Sign").is_empty());
}
