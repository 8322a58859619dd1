//! Stage 2 — trust. The review itself runs at onboarding (automatic rules); this stage delivers
//! the credential envelope once, to the holder of the claim token, after the review passed. The
//! access key is stored only as a hash; the callback signing secret is kept to sign callbacks.

use rand::RngCore;
use subtle::ConstantTimeEq;
use tokenops::api::{access_key_item_key, serve, sha256_hex, Call};
use tokenops::config::Ctx;
use tokenops::error::{ApiError, StoreError};
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::ids::{now_rfc3339, random_token};
use tokenops::model::{CredentialClaim, CredentialEnvelope, OnboardingRecord};
use tokenops::proof::webhook;
use tokenops::store::{Cond, Item, Key, Store, Write};

pub async fn handle<S: Store>(ctx: &Ctx<S>, req: ApiRequest) -> ApiResponse {
    serve(ctx, req, |call| async move {
        match call.req.operation {
            Op::ClaimCredentials => claim(ctx, call).await,
            other => Err(ApiError::internal(format!("trust does not serve {other}"))),
        }
    })
    .await
}

async fn claim<S: Store>(ctx: &Ctx<S>, call: Call) -> Result<ApiResponse, ApiError> {
    let agent_id = call.req.param("agent_id").to_string();
    let body: CredentialClaim = call.req.json()?;
    let item = ctx
        .store
        .get(&Key::agent(&agent_id))
        .await?
        .ok_or_else(|| ApiError::not_found("agent_id", &agent_id))?;
    let expected = item.get_attr("claim_hash").unwrap_or("");
    if !bool::from(
        sha256_hex(body.claim_token.as_bytes())
            .as_bytes()
            .ct_eq(expected.as_bytes()),
    ) {
        // Same answer as an unknown agent: a wrong token reveals nothing.
        return Err(ApiError::not_found("agent_id", &agent_id));
    }
    if item.get_attr("trust_status") != Some("active") {
        return Err(ApiError::conflict(
            "trust-review-failed",
            "agent_id",
            "the trust review did not pass; credentials are not issued",
        ));
    }
    if item.get_attr("claimed") != Some("false") {
        return Err(ApiError::conflict(
            "credentials-already-claimed",
            "claim_token",
            "the credential envelope was already delivered; it is shown once",
        ));
    }
    let mut record: OnboardingRecord = item.decode()?;
    record.credentials_claimed = true;
    let access_key = random_token("tok");
    let mut raw = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut raw);
    let secret = webhook::new_secret(raw);
    let envelope = CredentialEnvelope {
        object_type: "credential_envelope".into(),
        agent_id: agent_id.clone(),
        trust_profile_id: record.trust_profile_id.clone(),
        access_key_id: format!("key_{}", &sha256_hex(access_key.as_bytes())[..16]),
        access_key: access_key.clone(),
        callback_signing_secret: secret.clone(),
        signature_scheme: "standard-webhooks-v1".into(),
        issued_at: now_rfc3339(),
    };
    let writes = vec![
        Write::Update {
            key: Key::agent(&agent_id),
            add: vec![],
            set_attrs: vec![
                ("claimed".into(), "true".into()),
                ("callback_secret".into(), secret),
            ],
            set_doc: Some(
                serde_json::to_value(&record).map_err(|e| ApiError::internal(e.to_string()))?,
            ),
            conds: vec![Cond::AttrEq("claimed".into(), "false".into())],
        },
        Write::create(Item::new(
            access_key_item_key(&access_key),
            "access_key",
            Some(&agent_id),
            serde_json::json!({"access_key_id": envelope.access_key_id}),
        )),
    ];
    match ctx.store.transact(writes).await {
        Ok(()) => Ok(ApiResponse::json(201, &envelope)),
        Err(StoreError::ConditionFailed) => Err(ApiError::conflict(
            "credentials-already-claimed",
            "claim_token",
            "the credential envelope was already delivered; it is shown once",
        )),
        Err(e) => Err(e.into()),
    }
}
