//! Stage 5 — credit entitlement. The provider's confirmation webhook is authenticated by its
//! signature (Standard Webhooks scheme, provider secret), checked against the payment request,
//! and funds the entitlement with a double-entry transfer — once, however often it is redelivered.

use tokenops::api::{owned_object, serve, Call};
use tokenops::config::Ctx;
use tokenops::error::{ApiError, StoreError};
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::ids::{now, parse_id};
use tokenops::model::{Balances, CreditEntitlement, ProviderConfirmation, ProviderRoute};
use tokenops::proof::webhook;
use tokenops::store::{Item, Key, Store};

pub async fn handle<S: Store>(ctx: &Ctx<S>, req: ApiRequest) -> ApiResponse {
    serve(ctx, req, |call| async move {
        match call.req.operation {
            Op::ProviderConfirmation => confirm(ctx, call).await,
            Op::GetEntitlement => {
                let agent = call.caller.agent()?;
                let id = parse_id(
                    "cred",
                    call.req.param("credit_entitlement_id"),
                    "credit_entitlement_id",
                )?;
                let item = owned_object(&ctx.store, &id, agent, "credit_entitlement_id").await?;
                Ok(ApiResponse::json(200, &entitlement_view(&item)?))
            }
            other => Err(ApiError::internal(format!(
                "credit_entitlement does not serve {other}"
            ))),
        }
    })
    .await
}

/// The entitlement with its live balances (counters live in item numbers, not the document).
pub fn entitlement_view(item: &Item) -> Result<CreditEntitlement, StoreError> {
    let mut e: CreditEntitlement = item.decode()?;
    e.status = item.get_attr("status").unwrap_or(&e.status).to_string();
    e.balances = Balances {
        funded: item.get_num("funded"),
        available: item.get_num("available"),
        held: item.get_num("held"),
        captured: item.get_num("captured"),
        released: item.get_num("released"),
    };
    Ok(e)
}

/// The challenge of a provider confirmation's 401: it is authenticated by a Standard Webhooks
/// signature, not a bearer key (RFC 9110 §11.6.1: every 401 names its scheme).
const PROVIDER_CHALLENGE: &str = r#"Standard-Webhooks realm="tokenops-providers""#;

async fn confirm<S: Store>(ctx: &Ctx<S>, call: Call) -> Result<ApiResponse, ApiError> {
    let provider = call.req.param("provider").to_string();
    let secret = ctx
        .config
        .provider_secrets
        .get(&provider)
        .ok_or_else(|| ApiError::not_found("provider", &provider))?;
    let h = |n: &str| {
        call.req.header(n).ok_or_else(|| {
            ApiError::unauthorized(&format!("missing {n} header"))
                .with_header("www-authenticate", PROVIDER_CHALLENGE)
        })
    };
    let ts: i64 = h(webhook::HEADER_TIMESTAMP)?
        .parse()
        .map_err(|_| ApiError::bad_request(webhook::HEADER_TIMESTAMP, "must be unix seconds"))?;
    webhook::verify(
        secret,
        h(webhook::HEADER_ID)?,
        ts,
        h(webhook::HEADER_SIGNATURE)?,
        &call.req.body,
        now().unix_timestamp(),
        webhook::DEFAULT_TOLERANCE_SECS,
    )
    .map_err(|e| {
        ApiError::new(
            401,
            "bad-provider-signature",
            "Provider signature rejected",
            e.to_string(),
            Some(webhook::HEADER_SIGNATURE),
        )
        .with_header("www-authenticate", PROVIDER_CHALLENGE)
    })?;
    let c: ProviderConfirmation = call.req.json()?;
    let sid = parse_id("stl", &c.settlement_reference, "settlement_reference")
        .map_err(|_| ApiError::invalid("settlement_reference", "unknown settlement reference"))?;
    let route_item =
        ctx.store.get(&Key::object(&sid)).await?.ok_or_else(|| {
            ApiError::invalid("settlement_reference", "unknown settlement reference")
        })?;
    let route: ProviderRoute = route_item.decode()?;
    if route.provider != provider {
        return Err(ApiError::invalid(
            "settlement_reference",
            "settlement belongs to another provider",
        ));
    }
    if c.payment_request_id != route.payment_request.payment_request_id {
        return Err(ApiError::invalid(
            "payment_request_id",
            "does not match the settlement's payment request",
        ));
    }
    if c.amount_credits != route.credits {
        return Err(ApiError::invalid(
            "amount_credits",
            format!("expected {} credits", route.credits),
        ));
    }
    if c.status != "paid" {
        return Err(ApiError::invalid(
            "status",
            "only 'paid' confirmations fund an entitlement",
        ));
    }
    let ent_id = route.credit_entitlement_id.clone();
    let mut confirmed_route = route.clone();
    confirmed_route.status = "confirmed".into();
    confirmed_route.payment_request.status = "paid".into();
    let (confirmation, writes) = tokenops::provider::funding_writes(
        &confirmed_route,
        &c.provider_event_id,
        tokenops::provider::payment_outbox_key(&sid),
    )?;
    match ctx.store.transact(writes).await {
        Ok(()) => {
            tracing::info!(settlement_id = %sid, credit_entitlement_id = %ent_id, "entitlement funded");
            Ok(ApiResponse::json(200, &confirmation))
        }
        // A redelivered confirmation: the transfer exists, nothing moves again.
        Err(StoreError::ConditionFailed) => {
            let existing = ctx
                .store
                .get(&Key::object(&confirmation.confirmation_id))
                .await?
                .ok_or_else(|| {
                    ApiError::conflict(
                        "concurrent-update",
                        "settlement_reference",
                        "confirmation in progress; retry",
                    )
                })?;
            Ok(ApiResponse::json(200, &existing.doc))
        }
        Err(e) => Err(e.into()),
    }
}
