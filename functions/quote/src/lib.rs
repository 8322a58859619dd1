//! Stage 3 — quote: a price in credits for `requested_tool` + `requested_capability`, with expiry.

use tokenops::api::{commit, object_item, owned_object, serve, Call, Commit};
use tokenops::config::Ctx;
use tokenops::error::ApiError;
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::ids::{new_id, now, now_rfc3339, rfc3339};
use tokenops::model::{OnboardingRecord, Quote, QuoteRequest, TrustProfile};
use tokenops::rules;
use tokenops::store::{Key, Store, Write};

pub async fn handle<S: Store>(ctx: &Ctx<S>, req: ApiRequest) -> ApiResponse {
    serve(ctx, req, |call| async move {
        match call.req.operation {
            Op::CreateQuote => create(ctx, call).await,
            Op::GetQuote => {
                let agent = call.caller.agent()?;
                let id = tokenops::ids::parse_id("quote", call.req.param("quote_id"), "quote_id")?;
                Ok(ApiResponse::json(
                    200,
                    &owned_object(&ctx.store, &id, agent, "quote_id").await?.doc,
                ))
            }
            other => Err(ApiError::internal(format!("quote does not serve {other}"))),
        }
    })
    .await
}

/// The caller's active trust profile (quotes and runs need one).
pub async fn active_profile<S: Store>(ctx: &Ctx<S>, agent: &str) -> Result<TrustProfile, ApiError> {
    let item = ctx
        .store
        .get(&Key::agent(agent))
        .await?
        .ok_or_else(|| ApiError::not_found("agent_id", agent))?;
    let record: OnboardingRecord = item.decode()?;
    let profile: TrustProfile = owned_object(
        &ctx.store,
        &record.trust_profile_id,
        agent,
        "trust_profile_id",
    )
    .await?
    .decode()?;
    if profile.status != "active" {
        return Err(ApiError::conflict(
            "trust-profile-inactive",
            "trust_profile_id",
            "the agent's trust profile is not active",
        ));
    }
    Ok(profile)
}

async fn create<S: Store>(ctx: &Ctx<S>, call: Call) -> Result<ApiResponse, ApiError> {
    let agent = call.caller.agent()?.to_string();
    let q: QuoteRequest = call.req.json()?;
    let price = rules::price(&q.requested_tool, &q.requested_capability)?;
    let profile = active_profile(ctx, &agent).await?;
    if !profile.limits.allowed_tools.contains(&q.requested_tool) {
        return Err(ApiError::invalid(
            "requested_tool",
            "the trust profile does not allow this tool",
        ));
    }
    let quote = Quote {
        object_type: "quote".into(),
        quote_id: new_id("quote"),
        agent_id: agent.clone(),
        trust_profile_id: profile.trust_profile_id,
        requested_tool: q.requested_tool,
        requested_capability: q.requested_capability,
        price_credits: price,
        expires_at: rfc3339(now() + time::Duration::seconds(ctx.config.quote_ttl_secs)),
        created_at: now_rfc3339(),
        x402: ctx.config.x402.as_ref().map(|c| c.method(Some(price))),
    };
    let writes = vec![Write::create(object_item(
        &quote.quote_id,
        "quote",
        &agent,
        None,
        &quote,
    )?)];
    Ok(commit(
        &ctx.store,
        call.idem.as_ref(),
        Commit::new(201, &quote, writes),
    )
    .await?)
}
