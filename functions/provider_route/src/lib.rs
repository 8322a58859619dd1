//! Stage 4 — provider route: the agent picks a settlement provider for a quote; we create the
//! route, its payment request artifact and the (unfunded) credit entitlement, then tell the
//! provider, which confirms through the signed webhook (stage 5). With `provider: "x402"` the
//! request itself is paid (HTTP 402, x402 v2): the settled payment funds the entitlement at once.

use tokenops::api::{commit, object_item, owned_object, request_hash, serve, Call, Commit};
use tokenops::config::Ctx;
use tokenops::error::ApiError;
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::ids::{new_id, now, now_rfc3339, parse_id, parse_rfc3339, run_object_id};
use tokenops::model::{
    Balances, CreditEntitlement, PaymentRequest, ProviderRoute, Quote, SettlementRequest,
};
use tokenops::ports::SettlementProvider;
use tokenops::provider::PROVIDERS;
use tokenops::store::{Store, Write};
use tokenops::x402::chain::ChainReader;
use tokenops::x402::facilitator::Facilitator;
use tokenops::x402::pay::{self, Paid, PayRequest, Purpose, X402Ports};
use tokenops::x402::X402;

pub async fn handle<S: Store, P: SettlementProvider, F: Facilitator, C: ChainReader>(
    ctx: &Ctx<S>,
    provider: &P,
    x402: Option<&X402Ports<F, C>>,
    req: ApiRequest,
) -> ApiResponse {
    serve(ctx, req, |call| async move {
        match call.req.operation {
            Op::CreateSettlement => create(ctx, provider, x402, call).await,
            Op::GetSettlement => {
                let agent = call.caller.agent()?;
                let id = parse_id("stl", call.req.param("settlement_id"), "settlement_id")?;
                Ok(ApiResponse::json(
                    200,
                    &owned_object(&ctx.store, &id, agent, "settlement_id")
                        .await?
                        .doc,
                ))
            }
            other => Err(ApiError::internal(format!(
                "provider_route does not serve {other}"
            ))),
        }
    })
    .await
}

/// Quotes past `expires_at` are refused before anything moves.
pub fn check_quote_live(q: &Quote) -> Result<(), ApiError> {
    match parse_rfc3339(&q.expires_at) {
        Some(t) if t > now() => Ok(()),
        _ => Err(ApiError::new(
            422,
            "quote-expired",
            "Quote expired",
            format!("quote {} expired at {}", q.quote_id, q.expires_at),
            Some("quote_id"),
        )),
    }
}

/// Seconds until the quote expires: an x402 authorization must not outlive it.
pub fn quote_ttl_secs(q: &Quote) -> i64 {
    parse_rfc3339(&q.expires_at).map_or(0, |t| (t - now()).whole_seconds())
}

async fn create<S: Store, P: SettlementProvider, F: Facilitator, C: ChainReader>(
    ctx: &Ctx<S>,
    provider: &P,
    x402: Option<&X402Ports<F, C>>,
    call: Call,
) -> Result<ApiResponse, ApiError> {
    let agent = call.caller.agent()?.to_string();
    let r: SettlementRequest = call.req.json()?;
    let quote_id = parse_id("quote", &r.quote_id, "quote_id")
        .map_err(|_| ApiError::invalid("quote_id", "not a quote id"))?;
    let quote: Quote = owned_object(&ctx.store, &quote_id, &agent, "quote_id")
        .await?
        .decode()?;
    check_quote_live(&quote)?;
    let x402_on = ctx.config.x402.is_some() && x402.is_some();
    if !(PROVIDERS.contains(&r.provider.as_str()) || (x402_on && r.provider == X402)) {
        let mut available: Vec<&str> = PROVIDERS.to_vec();
        if x402_on {
            available.push(X402);
        }
        return Err(ApiError::invalid(
            "provider",
            format!(
                "unknown provider '{}'; available: {available:?}",
                r.provider.chars().take(40).collect::<String>()
            ),
        ));
    }
    let credits = r.credits.unwrap_or(quote.price_credits);
    if credits < quote.price_credits || credits > 100_000 {
        return Err(ApiError::invalid(
            "credits",
            format!(
                "credits must be between the quote's price ({}) and 100000",
                quote.price_credits
            ),
        ));
    }
    if let (Some(cfg), Some(ports), true) = (&ctx.config.x402, x402, r.provider == X402) {
        // Prepaid credits over x402: this request is the paid resource.
        let pr = PayRequest {
            agent: &agent,
            quote_id: &quote.quote_id,
            purpose: Purpose::TopUp,
            credits,
            requirements: cfg.requirements(credits, quote_ttl_secs(&quote)),
            resource_url: ctx.config.url("/settlements"),
            description: "TokenOps prepaid credits",
            request_hash: request_hash(&call.req),
        };
        let Some(header) = call.req.header(tokenops::x402::HEADER_SIGNATURE) else {
            return Err(pay::required(
                &pr,
                &format!("{credits} credits cost a payment"),
            ));
        };
        return match pay::pay(ctx, ports, header, &pr).await? {
            Paid::Replay(resp) => Ok(resp),
            Paid::Funded {
                record,
                idem,
                headers,
            } => {
                let route =
                    owned_object(&ctx.store, &record.settlement_id, &agent, "settlement_id")
                        .await?
                        .doc;
                let mut resp =
                    commit(&ctx.store, Some(&idem), Commit::new(201, &route, vec![])).await?;
                resp.headers.extend(headers);
                Ok(resp)
            }
        };
    }
    let settlement_id = new_id("stl");
    let ent_id = run_object_id("cred", &settlement_id);
    let route = ProviderRoute {
        object_type: "provider_route".into(),
        settlement_id: settlement_id.clone(),
        agent_id: agent.clone(),
        quote_id: quote.quote_id.clone(),
        provider: r.provider.clone(),
        credits,
        payment_request: PaymentRequest {
            object_type: "payment_request".into(),
            payment_request_id: run_object_id("payreq", &settlement_id),
            provider: r.provider.clone(),
            settlement_reference: settlement_id.clone(),
            amount_credits: credits,
            status: "awaiting_confirmation".into(),
            confirmation_endpoint: ctx
                .config
                .url(&format!("/providers/{}/confirmations", r.provider)),
        },
        credit_entitlement_id: ent_id.clone(),
        status: "awaiting_confirmation".into(),
        created_at: now_rfc3339(),
        payment: None,
        failure_reason: None,
    };
    let ent = CreditEntitlement {
        object_type: "credit_entitlement".into(),
        credit_entitlement_id: ent_id.clone(),
        agent_id: agent.clone(),
        settlement_id: settlement_id.clone(),
        quote_id: quote.quote_id,
        provider: r.provider,
        status: "awaiting_funding".into(),
        balances: Balances::default(),
        created_at: now_rfc3339(),
    };
    let mut ent_item = object_item(&ent_id, "credit_entitlement", &agent, None, &ent)?
        .attr("status", "awaiting_funding");
    for n in ["funded", "available", "held", "captured", "released"] {
        ent_item = ent_item.num(n, 0);
    }
    let writes = vec![
        Write::create(object_item(
            &settlement_id,
            "provider_route",
            &agent,
            None,
            &route,
        )?),
        Write::create(ent_item),
        tokenops::provider::payment_outbox_write(&route)?,
    ];
    let resp = commit(
        &ctx.store,
        call.idem.as_ref(),
        Commit::new(201, &route, writes),
    )
    .await?;
    if resp.header("idempotent-replayed").is_none() {
        // The request is in the payment outbox already: if the provider cannot be told now, the
        // relay tells it later, so the settlement still ends funded or failed.
        if let Err(e) = provider.request_payment(&route).await {
            tracing::warn!(settlement_id = %route.settlement_id, error = %e, "provider not told yet; the relay retries");
        }
    }
    Ok(resp)
}
