//! Stage 1 — onboarding. `POST /agents` stores the agent's manifest and runs the automatic trust
//! review (rules in `tokenops::rules`), so the agent learns its status at once; the one-time claim
//! token unlocks the credential envelope (stage 2). Also serves discovery: manifest, schemas, OpenAPI.

use tokenops::api::{commit, object_item, serve, sha256_hex, Call, Commit};
use tokenops::config::Ctx;
use tokenops::error::ApiError;
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::ids::{new_id, now_rfc3339, random_token, run_object_id};
use tokenops::model::{
    AgentManifest, AgentView, OnboardingRecord, OnboardingResponse, TrustProfile,
};
use tokenops::store::{Item, Key, Store, Write};
use tokenops::{manifest, model, rules};

pub async fn handle<S: Store>(ctx: &Ctx<S>, req: ApiRequest) -> ApiResponse {
    serve(ctx, req, |call| async move {
        match call.req.operation {
            Op::CreateAgent => create_agent(ctx, call).await,
            Op::GetAgent => get_agent(ctx, call).await,
            Op::Manifest => Ok(ApiResponse::json(
                200,
                &manifest::manifest(&ctx.config.public_base_url, ctx.config.x402.as_ref()),
            )),
            Op::Openapi => Ok(ApiResponse::json(
                200,
                &manifest::openapi(&ctx.config.public_base_url),
            )),
            Op::Schema => {
                let name = call.req.param("object");
                model::schemas()
                    .remove(name)
                    .map(|s| ApiResponse::json(200, &s))
                    .ok_or_else(|| ApiError::not_found("object", name))
            }
            other => Err(ApiError::internal(format!(
                "onboarding does not serve {other}"
            ))),
        }
    })
    .await
}

async fn create_agent<S: Store>(ctx: &Ctx<S>, call: Call) -> Result<ApiResponse, ApiError> {
    let m: AgentManifest = call.req.json()?;
    rules::validate_manifest(&m, ctx.config.allow_loopback_callbacks)?;
    let (passed, checks, limits) = rules::trust_review(&m);
    let agent_id = new_id("agent");
    let trust_profile_id = run_object_id("trust", &agent_id);
    let claim_token = random_token("claim");
    let status = if passed {
        "trust_review_passed"
    } else {
        "trust_review_failed"
    };
    let now = now_rfc3339();
    let record = OnboardingRecord {
        object_type: "agent_onboarding".into(),
        agent_id: agent_id.clone(),
        onboarding_status: status.into(),
        manifest: m,
        trust_profile_id: trust_profile_id.clone(),
        credentials_claimed: false,
        created_at: now.clone(),
    };
    let profile = TrustProfile {
        object_type: "trust_profile".into(),
        trust_profile_id: trust_profile_id.clone(),
        agent_id: agent_id.clone(),
        status: if passed { "active" } else { "rejected" }.into(),
        tier: "sandbox".into(),
        limits,
        checks,
        reviewed_at: now,
    };
    let agent_item = Item::of(Key::agent(&agent_id), "agent", Some(&agent_id), &record)?
        .attr("claim_hash", sha256_hex(claim_token.as_bytes()))
        .attr("claimed", "false")
        .attr("trust_status", profile.status.clone());
    let writes = vec![
        Write::create(agent_item),
        Write::create(object_item(
            &trust_profile_id,
            "trust_profile",
            &agent_id,
            None,
            &profile,
        )?),
    ];
    let body = OnboardingResponse {
        agent_id: agent_id.clone(),
        onboarding_status: status.into(),
        trust_profile_id,
        claim_token,
        links: [
            (
                "agent".to_string(),
                ctx.config.url(&format!("/agents/{agent_id}")),
            ),
            (
                "credentials".to_string(),
                ctx.config.url(&format!("/agents/{agent_id}/credentials")),
            ),
        ]
        .into(),
    };
    Ok(commit(
        &ctx.store,
        call.idem.as_ref(),
        Commit::new(201, &body, writes),
    )
    .await?)
}

async fn get_agent<S: Store>(ctx: &Ctx<S>, call: Call) -> Result<ApiResponse, ApiError> {
    let id = call.req.param("agent_id");
    if call.caller.agent()? != id {
        return Err(ApiError::not_found("agent_id", id));
    }
    let item = ctx
        .store
        .get(&Key::agent(id))
        .await?
        .ok_or_else(|| ApiError::not_found("agent_id", id))?;
    let onboarding: OnboardingRecord = item.decode()?;
    let profile: TrustProfile = tokenops::api::owned_object(
        &ctx.store,
        &onboarding.trust_profile_id,
        id,
        "trust_profile_id",
    )
    .await?
    .decode()?;
    Ok(ApiResponse::json(
        200,
        &AgentView {
            agent_id: id.into(),
            onboarding,
            trust_profile: profile,
        },
    ))
}
