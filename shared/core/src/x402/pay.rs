//! The money rules of an x402 payment, for every route that takes one (`POST /runs`,
//! `POST /settlements`):
//!
//! 1. **Verify before anything is written.** The header is decoded and checked against what we
//!    asked for (scheme, network, asset, payTo, amount, validity window), then the facilitator
//!    verifies it (signature, payer balance, nonce unused). A refusal is a 402 naming what was
//!    wrong, with the requirements again; a facilitator that cannot be asked is a 503.
//! 2. **One payment funds at most once.** The payment is keyed by the authorization —
//!    `X402#<network>#<asset>#<payer>#<nonce>` — and claimed with a conditional create together
//!    with its route and unfunded entitlement, *before* settling. A resend of the same
//!    `PAYMENT-SIGNATURE`, sequential or concurrent, reads that record and gets the first
//!    outcome (concurrent ones wait for it); a `payment-identifier` id keys it too.
//! 3. **Never credits without the transfer, never a transfer without the credits.** Credits are
//!    written only after a successful settle, in one transaction with the record's `funded`. A
//!    refused settle funds nothing. A settle whose outcome is unknown leaves the settlement
//!    `settlement_pending` with an outbox entry (`X402PEND/<settlement>`); [`reconcile`] asks
//!    the chain whether the authorization was used: used → funded (with the transaction found
//!    in the token's `AuthorizationUsed` log), expired unused → failed, otherwise settle again.
//!
//! The request's own response (the queued run, the funded route) is stored under the payment
//! ([`Idem::for_subject`]), so every resend of the payment gets the same one.

use serde::{Deserialize, Serialize};

use super::chain::ChainReader;
use super::facilitator::{Facilitator, FacilitatorError};
use super::*;
use crate::api::{object_item, Idem};
use crate::config::Ctx;
use crate::error::{ApiError, StoreError};
use crate::http::ApiResponse;
use crate::ids::{now, now_ms, now_rfc3339, run_object_id};
use crate::model::{Balances, CreditEntitlement, PaymentRequest, ProviderRoute};
use crate::store::{Cond, Item, Key, Store, Write};

/// The facilitator and the chain reader: what an x402 route needs besides the store.
#[derive(Clone)]
pub struct X402Ports<F, C> {
    pub facilitator: F,
    pub chain: C,
}

pub type HttpX402 = X402Ports<facilitator::HttpFacilitator, chain::RpcChain>;

impl HttpX402 {
    pub fn from_config(cfg: &X402Config) -> Result<Self, reqwest::Error> {
        Ok(X402Ports {
            facilitator: facilitator::HttpFacilitator::new(&cfg.facilitator_url, cfg.timeout)?,
            chain: chain::RpcChain::new(&cfg.rpc_url, cfg.timeout)?,
        })
    }
}

pub const SETTLING: &str = "settling";
pub const PENDING: &str = "settlement_pending";
pub const FUNDED: &str = "funded";
pub const FAILED: &str = "failed";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// `POST /runs`: the payment funds an entitlement that pays this run.
    Run,
    /// `POST /settlements`: prepaid credits.
    TopUp,
}

/// What the paying request is, so a payment can be bound to it and priced.
pub struct PayRequest<'a> {
    pub agent: &'a str,
    pub quote_id: &'a str,
    pub purpose: Purpose,
    pub credits: i64,
    pub requirements: PaymentRequirements,
    pub resource_url: String,
    pub description: &'a str,
    /// [`crate::api::request_hash`] of the request: a payment answers one request only.
    pub request_hash: String,
}

/// One payment's record (`X402#…`), the truth about it from claim to funded or failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PaymentRecord {
    pub payment_key: String,
    pub settlement_id: String,
    pub agent_id: String,
    pub quote_id: String,
    pub purpose: Purpose,
    pub credits: i64,
    pub request_hash: String,
    pub payload: PaymentPayload,
    pub requirements: PaymentRequirements,
    pub payment: X402Payment,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub settle: Option<SettleResponse>,
    pub claimed_at_ms: i64,
}

pub enum Paid {
    /// Funded (now or by an earlier send of it): the caller completes its request, committing
    /// its response under `idem`, and adds `headers`.
    Funded {
        record: Box<PaymentRecord>,
        idem: Idem,
        headers: BTreeMap<String, String>,
    },
    /// The request this payment paid for was completed before: its response.
    Replay(ApiResponse),
}

fn record_key(payment_key: &str) -> Key {
    Key::new(format!("X402#{payment_key}"), "X402")
}
fn alias_key(network: &str, payer: &str, id: &str) -> Key {
    Key::new(format!("X402ID#{network}#{}#{id}", lc(payer)), "X402ID")
}
pub fn outbox_key(settlement_id: &str) -> Key {
    Key::new("X402PEND", settlement_id)
}

fn record_item(r: &PaymentRecord) -> Result<Item, StoreError> {
    Ok(Item::of(
        record_key(&r.payment_key),
        "x402_payment",
        Some(&r.agent_id),
        r,
    )?
    .attr("status", r.status.clone()))
}

/// The record moves on only from the status it was read in (compare-and-set).
fn record_update(r: &PaymentRecord, from: &str) -> Result<Write, StoreError> {
    Ok(Write::put_if(
        record_item(r)?,
        vec![Cond::AttrEq("status".into(), from.into())],
    ))
}

fn idem_for(r: &PaymentRecord, ttl_secs: i64) -> Idem {
    Idem::for_subject(
        &format!("x402#{}", r.payment_key),
        r.request_hash.clone(),
        now().unix_timestamp() + ttl_secs,
    )
}

/// A 402: what to pay (the `PAYMENT-REQUIRED` header) and, as problem+json, why.
pub fn payment_problem(
    pr: &PayRequest<'_>,
    kind: &'static str,
    field: Option<&str>,
    detail: impl Into<String>,
) -> ApiError {
    let detail = detail.into();
    let (title, error) = match kind {
        "payment-required" => ("Payment required", None),
        _ => ("Payment refused", Some(detail.as_str())),
    };
    let body = payment_required(&pr.resource_url, pr.description, &pr.requirements, error);
    ApiError::new(402, kind, title, detail.clone(), field)
        .with_header(HEADER_REQUIRED, encode_header(&body))
        .with_header("access-control-expose-headers", "PAYMENT-REQUIRED")
}

/// The 402 of a request that carried no payment.
pub fn required(pr: &PayRequest<'_>, why: &str) -> ApiError {
    let r = &pr.requirements;
    payment_problem(
        pr,
        "payment-required",
        Some(HEADER_SIGNATURE),
        format!(
            "{why}: pay {} atomic units of {} on {} to {} with x402 (scheme exact): resend this \
             request with a PAYMENT-SIGNATURE header answering the PAYMENT-REQUIRED header",
            r.amount, r.asset, r.network, r.pay_to
        ),
    )
}

/// A refused payment; `part` is the path inside the decoded header ("" for the header itself).
fn refused(pr: &PayRequest<'_>, part: &str, detail: impl Into<String>) -> ApiError {
    let field = match part {
        "" => "PAYMENT-SIGNATURE".to_string(),
        p => format!("PAYMENT-SIGNATURE.{p}"),
    };
    payment_problem(pr, "payment-invalid", Some(&field), detail)
}

fn facilitator_down(e: FacilitatorError) -> ApiError {
    tracing::warn!(error = %e, "x402 facilitator not reachable");
    ApiError::unavailable(
        "the payment facilitator cannot be reached; nothing was charged or written — retry \
         with the same PAYMENT-SIGNATURE after the Retry-After delay",
    )
}

fn pending_problem(r: &PaymentRecord) -> ApiError {
    ApiError::new(
        503,
        "payment-pending",
        "Payment settlement pending",
        format!(
            "the settlement of this payment ({}) has not resolved yet; nothing is lost: it ends \
             funded or failed (GET /settlements/{}). Resend the same PAYMENT-SIGNATURE after the \
             Retry-After delay for the outcome — it is never charged twice",
            r.settlement_id, r.settlement_id
        ),
        Some(HEADER_SIGNATURE),
    )
    .with_header("retry-after", "2")
}

fn parse_u128(s: &str) -> Option<u128> {
    (!s.is_empty() && s.len() <= 39 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn is_hex(s: &str, bytes: usize) -> bool {
    s.len() == 2 + 2 * bytes && s.starts_with("0x") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// What we asked for, checked before the facilitator is asked: `Err((field, why))`.
fn check(
    cfg: &X402Config,
    p: &PaymentPayload,
    want: &PaymentRequirements,
) -> Result<ExactEvmPayload, (&'static str, String)> {
    if p.x402_version != X402_VERSION {
        return Err(("x402Version", format!("x402Version must be {X402_VERSION}")));
    }
    let a = &p.accepted;
    if a.scheme != SCHEME_EXACT {
        return Err((
            "accepted.scheme",
            format!(
                "scheme '{}' is not accepted; use exact",
                a.scheme.chars().take(40).collect::<String>()
            ),
        ));
    }
    if a.network != cfg.network {
        return Err((
            "accepted.network",
            format!("network must be {}", cfg.network),
        ));
    }
    if lc(&a.asset) != lc(&cfg.asset) {
        return Err(("accepted.asset", format!("asset must be {}", cfg.asset)));
    }
    if lc(&a.pay_to) != lc(&cfg.pay_to) {
        return Err(("accepted.payTo", format!("payTo must be {}", cfg.pay_to)));
    }
    let e: ExactEvmPayload = serde_json::from_value(p.payload.clone()).map_err(|e| {
        (
            "payload",
            format!("not an exact EVM payload (signature + authorization): {e}"),
        )
    })?;
    let au = &e.authorization;
    if !is_hex(&au.from, 20) {
        return Err((
            "payload.authorization.from",
            "must be a 20-byte hex address".into(),
        ));
    }
    if !is_hex(&au.nonce, 32) {
        return Err((
            "payload.authorization.nonce",
            "must be 32 bytes of hex".into(),
        ));
    }
    if lc(&au.to) != lc(&cfg.pay_to) {
        return Err((
            "payload.authorization.to",
            format!("must pay {}", cfg.pay_to),
        ));
    }
    let value = parse_u128(&au.value)
        .ok_or(("payload.authorization.value", "not an integer".to_string()))?;
    let amount = parse_u128(&want.amount).unwrap_or(u128::MAX);
    if value < amount {
        return Err((
            "payload.authorization.value",
            format!("underpaid: {value} < {amount} atomic units"),
        ));
    }
    if value > amount {
        return Err((
            "payload.authorization.value",
            format!("the exact scheme pays exactly {amount} atomic units, not {value}"),
        ));
    }
    let t = now().unix_timestamp() as u128;
    let before = parse_u128(&au.valid_before).ok_or((
        "payload.authorization.validBefore",
        "not an integer".to_string(),
    ))?;
    let after = parse_u128(&au.valid_after).ok_or((
        "payload.authorization.validAfter",
        "not an integer".to_string(),
    ))?;
    // Settlement takes a few seconds: an authorization about to lapse is as good as expired.
    if before <= t + 6 {
        return Err((
            "payload.authorization.validBefore",
            "the authorization has expired".into(),
        ));
    }
    if after > t {
        return Err((
            "payload.authorization.validAfter",
            "the authorization is not valid yet".into(),
        ));
    }
    Ok(e)
}

/// The facilitator's invalid reason, mapped to the part of the payment it is about.
fn reason_field(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("signature") {
        "payload.signature"
    } else if r.contains("balance") || r.contains("insufficient") {
        "payload.authorization.from"
    } else if r.contains("before") || r.contains("expired") {
        "payload.authorization.validBefore"
    } else if r.contains("after") || r.contains("not_yet") {
        "payload.authorization.validAfter"
    } else if r.contains("nonce") || r.contains("used") {
        "payload.authorization.nonce"
    } else if r.contains("value") || r.contains("amount") {
        "payload.authorization.value"
    } else if r.contains("recipient") || r.contains("pay_to") || r.contains("payto") {
        "payload.authorization.to"
    } else {
        "payload"
    }
}

/// Takes the payment in `header` for the request `pr`: see the module's rules.
pub async fn pay<S: Store, F: Facilitator, C: ChainReader>(
    ctx: &Ctx<S>,
    ports: &X402Ports<F, C>,
    header: &str,
    pr: &PayRequest<'_>,
) -> Result<Paid, ApiError> {
    let cfg = ctx
        .config
        .x402
        .as_ref()
        .ok_or_else(|| ApiError::internal("x402 is not configured in this process"))?;
    let payload = decode_payment(header).map_err(|e| refused(pr, "", e))?;
    let exact = check(cfg, &payload, &pr.requirements).map_err(|(f, d)| refused(pr, f, d))?;
    let au = &exact.authorization;
    let payment_key = format!(
        "{}#{}#{}#{}",
        cfg.network,
        lc(&cfg.asset),
        lc(&au.from),
        lc(&au.nonce)
    );
    let alias = payment_identifier(&payload).map(|id| alias_key(&cfg.network, &au.from, &id));

    // A payment seen before answers with its first outcome (verify would now refuse its nonce).
    if let Some(r) = lookup(ctx, &payment_key, alias.as_ref()).await? {
        return outcome(ctx, r, pr).await;
    }

    let v = ports
        .facilitator
        .verify(&payload, &pr.requirements)
        .await
        .map_err(facilitator_down)?;
    if !v.is_valid {
        // A send of this payment that raced ours may have claimed and settled it meanwhile (the
        // facilitator then calls its nonce used): its outcome, not a refusal.
        if let Some(r) = lookup(ctx, &payment_key, alias.as_ref()).await? {
            return outcome(ctx, r, pr).await;
        }
        let reason = v.invalid_reason.unwrap_or_else(|| "invalid".into());
        // The reason is x402's stable code; the facilitator's message (revert data, RPC text)
        // goes to the log, not to the payer.
        tracing::info!(payer = %au.from, reason = %reason, message = ?v.invalid_message, "x402 payment refused by the facilitator");
        return Err(refused(
            pr,
            reason_field(&reason),
            format!("the facilitator refused the payment ({reason}); nothing was charged"),
        ));
    }

    let settlement_id = crate::ids::new_id("stl");
    let record = PaymentRecord {
        payment_key: payment_key.clone(),
        settlement_id: settlement_id.clone(),
        agent_id: pr.agent.into(),
        quote_id: pr.quote_id.into(),
        purpose: pr.purpose,
        credits: pr.credits,
        request_hash: pr.request_hash.clone(),
        payload: payload.clone(),
        requirements: pr.requirements.clone(),
        payment: X402Payment {
            scheme: SCHEME_EXACT.into(),
            network: cfg.network.clone(),
            asset: cfg.asset.clone(),
            amount: pr.requirements.amount.clone(),
            payer: au.from.clone(),
            pay_to: cfg.pay_to.clone(),
            nonce: lc(&au.nonce),
            transaction: None,
        },
        status: SETTLING.into(),
        reason: None,
        settle: None,
        claimed_at_ms: now_ms(),
    };
    match ctx
        .store
        .transact(claim_writes(ctx, &record, alias.as_ref())?)
        .await
    {
        Ok(()) => {}
        // Another send of this payment claimed it first: its outcome.
        Err(StoreError::ConditionFailed) => {
            return match lookup(ctx, &payment_key, alias.as_ref()).await? {
                Some(r) => outcome(ctx, r, pr).await,
                None => Err(ApiError::conflict(
                    "concurrent-update",
                    HEADER_SIGNATURE,
                    "this payment is being taken by another request; retry",
                )),
            };
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(settlement_id = %settlement_id, payer = %au.from, amount = %pr.requirements.amount, "x402 payment verified and claimed; settling");
    let record = settle_claimed(ctx, ports, record).await?;
    finish(ctx, record, pr).await
}

async fn lookup<S: Store>(
    ctx: &Ctx<S>,
    payment_key: &str,
    alias: Option<&Key>,
) -> Result<Option<PaymentRecord>, StoreError> {
    let key = match alias {
        Some(a) => match ctx.store.get(a).await? {
            Some(i) => i.doc["payment_key"]
                .as_str()
                .unwrap_or(payment_key)
                .to_string(),
            None => payment_key.to_string(),
        },
        None => payment_key.to_string(),
    };
    ctx.store
        .get(&record_key(&key))
        .await?
        .map(|i| i.decode())
        .transpose()
}

/// The claim: the record, the route and its unfunded entitlement, the reconciler's outbox
/// entry (and the payment id's alias): all created together or not at all.
fn claim_writes<S>(
    ctx: &Ctx<S>,
    r: &PaymentRecord,
    alias: Option<&Key>,
) -> Result<Vec<Write>, StoreError> {
    let sid = &r.settlement_id;
    let ent_id = run_object_id("cred", sid);
    let route = route_of(ctx, r, PENDING);
    let ent = CreditEntitlement {
        object_type: "credit_entitlement".into(),
        credit_entitlement_id: ent_id.clone(),
        agent_id: r.agent_id.clone(),
        settlement_id: sid.clone(),
        quote_id: r.quote_id.clone(),
        provider: X402.into(),
        status: "awaiting_funding".into(),
        balances: Balances::default(),
        created_at: now_rfc3339(),
    };
    let mut ent_item = object_item(&ent_id, "credit_entitlement", &r.agent_id, None, &ent)?
        .attr("status", "awaiting_funding");
    for n in ["funded", "available", "held", "captured", "released"] {
        ent_item = ent_item.num(n, 0);
    }
    let mut w = vec![
        Write::create(record_item(r)?),
        Write::create(object_item(
            sid,
            "provider_route",
            &r.agent_id,
            None,
            &route,
        )?),
        Write::create(ent_item),
        Write::create(
            Item::new(
                outbox_key(sid),
                "x402_outbox",
                Some(&r.agent_id),
                serde_json::json!({"payment_key": r.payment_key}),
            )
            .num("queued_at_ms", now_ms())
            .num("tries", 0),
        ),
    ];
    if let Some(a) = alias {
        w.push(Write::create(Item::new(
            a.clone(),
            "x402_alias",
            Some(&r.agent_id),
            serde_json::json!({"payment_key": r.payment_key}),
        )));
    }
    Ok(w)
}

/// The provider route of a payment in `status` (`settlement_pending`, `confirmed`, `failed`).
fn route_of<S>(ctx: &Ctx<S>, r: &PaymentRecord, status: &str) -> ProviderRoute {
    let sid = &r.settlement_id;
    ProviderRoute {
        object_type: "provider_route".into(),
        settlement_id: sid.clone(),
        agent_id: r.agent_id.clone(),
        quote_id: r.quote_id.clone(),
        provider: X402.into(),
        credits: r.credits,
        payment_request: PaymentRequest {
            object_type: "payment_request".into(),
            payment_request_id: run_object_id("payreq", sid),
            provider: X402.into(),
            settlement_reference: r.payment.transaction.clone().unwrap_or_else(|| sid.clone()),
            amount_credits: r.credits,
            status: match status {
                "confirmed" => "paid",
                "failed" => "failed",
                _ => PENDING,
            }
            .into(),
            confirmation_endpoint: ctx.config.url(&format!("/settlements/{sid}")),
        },
        credit_entitlement_id: run_object_id("cred", sid),
        status: status.into(),
        created_at: crate::ids::rfc3339(
            time::OffsetDateTime::from_unix_timestamp_nanos(r.claimed_at_ms as i128 * 1_000_000)
                .unwrap_or_else(|_| now()),
        ),
        payment: Some(r.payment.clone()),
        failure_reason: r.reason.clone(),
    }
}

/// Settles a claimed payment and records what came of it.
async fn settle_claimed<S: Store, F: Facilitator, C: ChainReader>(
    ctx: &Ctx<S>,
    ports: &X402Ports<F, C>,
    r: PaymentRecord,
) -> Result<PaymentRecord, StoreError> {
    let from = r.status.clone();
    match ports.facilitator.settle(&r.payload, &r.requirements).await {
        Ok(s) if s.success && !s.transaction.is_empty() => {
            let tx = s.transaction.clone();
            fund(ctx, r, &from, Some(tx), s).await
        }
        Ok(s) => {
            let reason = s
                .error_reason
                .clone()
                .unwrap_or_else(|| "settle_failed".into());
            // Refused before anything was sent (no transaction), and the chain agrees the
            // authorization is unused: nothing moved, and nothing can with this record.
            let used = ports
                .chain
                .authorization_used(&r.payment.asset, &r.payment.payer, &r.payment.nonce)
                .await;
            match used {
                Ok(true) => resolve_used(ctx, ports, r, &from).await,
                // The facilitator sees the nonce used while the chain's latest block does not: a
                // transaction using it is in flight. Only the chain can end this one.
                Ok(false) if says_used(&reason) => mark_pending(ctx, r, &from).await,
                // Refused before anything was broadcast, on the first attempt: nothing moved.
                Ok(false) if s.transaction.is_empty() && from == SETTLING => {
                    fail(ctx, r, &from, &reason).await
                }
                // Broadcast, yet unused: reverted (or not mined yet). If the facilitator now
                // refuses it, it can never settle through it: failed, nothing moved.
                Ok(false) => settle_no_more(ctx, ports, r, &from).await,
                Err(e) => {
                    tracing::warn!(settlement_id = %r.settlement_id, reason = %reason, error = %e, "x402 settle refused and the chain unreadable; the reconciler decides");
                    mark_pending(ctx, r, &from).await
                }
            }
        }
        Err(e) => {
            tracing::warn!(settlement_id = %r.settlement_id, error = %e, "x402 settle outcome unknown; the reconciler resolves it from the chain");
            mark_pending(ctx, r, &from).await
        }
    }
}

/// An unused authorization whose settle went wrong: failed if the facilitator now refuses it
/// (its verify simulates the transfer on the chain's state), else still pending.
async fn settle_no_more<S: Store, F: Facilitator, C: ChainReader>(
    ctx: &Ctx<S>,
    ports: &X402Ports<F, C>,
    r: PaymentRecord,
    from: &str,
) -> Result<PaymentRecord, StoreError> {
    let verified = ports.facilitator.verify(&r.payload, &r.requirements).await;
    after_verify(ctx, r, from, verified).await
}

/// What a fresh verify of an unused authorization decides: refused for a reason other than its
/// nonce → failed (nothing moved, nothing can); anything else → still pending.
async fn after_verify<S: Store>(
    ctx: &Ctx<S>,
    r: PaymentRecord,
    from: &str,
    verified: Result<VerifyResponse, FacilitatorError>,
) -> Result<PaymentRecord, StoreError> {
    match verified {
        Ok(v) if !v.is_valid && !says_used(v.invalid_reason.as_deref().unwrap_or_default()) => {
            let reason = v.invalid_reason.unwrap_or_else(|| "invalid".into());
            fail(ctx, r, from, &reason).await
        }
        _ => mark_pending(ctx, r, from).await,
    }
}

/// A refusal because the authorization's nonce is (being) used: money may be moving.
fn says_used(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("nonce") || r.contains("used")
}

async fn resolve_used<S: Store, F: Facilitator, C: ChainReader>(
    ctx: &Ctx<S>,
    ports: &X402Ports<F, C>,
    r: PaymentRecord,
    from: &str,
) -> Result<PaymentRecord, StoreError> {
    let p = &r.payment;
    let tx = match ports
        .chain
        .authorization_tx(&p.asset, &p.payer, &p.nonce)
        .await
    {
        Ok(tx) => tx,
        Err(e) => {
            tracing::warn!(settlement_id = %r.settlement_id, error = %e, "x402: authorization used but its transaction not found; funded without it");
            None
        }
    };
    let s = SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(p.payer.clone()),
        transaction: tx.clone().unwrap_or_default(),
        network: p.network.clone(),
        amount: Some(p.amount.clone()),
    };
    fund(ctx, r, from, tx, s).await
}

async fn save_or_reread<S: Store>(
    ctx: &Ctx<S>,
    r: PaymentRecord,
    writes: Vec<Write>,
) -> Result<PaymentRecord, StoreError> {
    match ctx.store.transact(writes).await {
        Ok(()) => Ok(r),
        // Someone else moved it on (a concurrent reconcile): theirs stands.
        Err(StoreError::ConditionFailed) => ctx
            .store
            .get(&record_key(&r.payment_key))
            .await?
            .ok_or(StoreError::ConditionFailed)?
            .decode(),
        Err(e) => Err(e),
    }
}

/// Credits after the transfer: the funding transfer, the confirmed route, the confirmation
/// object and the record's `funded`, in one transaction.
async fn fund<S: Store>(
    ctx: &Ctx<S>,
    mut r: PaymentRecord,
    from: &str,
    tx: Option<String>,
    settle: SettleResponse,
) -> Result<PaymentRecord, StoreError> {
    let sid = r.settlement_id.clone();
    r.payment.transaction = tx.clone();
    r.status = FUNDED.into();
    r.settle = Some(settle);
    let (_, mut writes) = crate::provider::funding_writes(
        &route_of(ctx, &r, "confirmed"),
        tx.as_deref().unwrap_or_default(),
        outbox_key(&sid),
    )?;
    writes.push(record_update(&r, from)?);
    tracing::info!(settlement_id = %sid, transaction = ?tx, credits = r.credits, "x402 payment settled; entitlement funded");
    save_or_reread(ctx, r, writes).await
}

/// Nothing moved: the route and entitlement fail, the record keeps why.
async fn fail<S: Store>(
    ctx: &Ctx<S>,
    mut r: PaymentRecord,
    from: &str,
    reason: &str,
) -> Result<PaymentRecord, StoreError> {
    let sid = r.settlement_id.clone();
    r.status = FAILED.into();
    r.reason = Some(reason.into());
    let ent_id = run_object_id("cred", &sid);
    let writes = vec![
        record_update(&r, from)?,
        Write::put(object_item(
            &sid,
            "provider_route",
            &r.agent_id,
            None,
            &route_of(ctx, &r, "failed"),
        )?),
        Write::Update {
            key: Key::object(&ent_id),
            add: vec![],
            set_attrs: vec![("status".into(), "failed".into())],
            set_doc: None,
            conds: vec![Cond::AttrEq("status".into(), "awaiting_funding".into())],
        },
        Write::Delete {
            key: outbox_key(&sid),
            conds: vec![],
        },
    ];
    tracing::info!(settlement_id = %sid, reason, "x402 payment failed; nothing was charged");
    save_or_reread(ctx, r, writes).await
}

async fn mark_pending<S: Store>(
    ctx: &Ctx<S>,
    mut r: PaymentRecord,
    from: &str,
) -> Result<PaymentRecord, StoreError> {
    if from == PENDING {
        return Ok(r);
    }
    r.status = PENDING.into();
    let w = vec![record_update(&r, from)?];
    save_or_reread(ctx, r, w).await
}

/// How long a request may be settling before its claim counts as abandoned.
fn settle_lease_ms<S>(ctx: &Ctx<S>) -> i64 {
    ctx.config
        .x402
        .as_ref()
        .map_or(30_000, |c| c.timeout.as_millis() as i64)
        + 10_000
}

/// A payment seen before: its first outcome. A send racing the first waits for it to settle.
async fn outcome<S: Store>(
    ctx: &Ctx<S>,
    mut r: PaymentRecord,
    pr: &PayRequest<'_>,
) -> Result<Paid, ApiError> {
    if r.agent_id != pr.agent || r.purpose != pr.purpose || r.quote_id != pr.quote_id {
        return Err(refused(
            pr,
            "payload.authorization.nonce",
            "this payment was already used for another request; sign a new one",
        ));
    }
    if r.request_hash != pr.request_hash {
        return Err(ApiError::new(
            422,
            "payment-reused",
            "Payment reused",
            "this PAYMENT-SIGNATURE paid for a different request body; resend that request, or \
             sign a new payment for this one",
            Some(HEADER_SIGNATURE),
        ));
    }
    let lease = settle_lease_ms(ctx);
    while r.status == SETTLING && now_ms() - r.claimed_at_ms < lease {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        r = ctx
            .store
            .get(&record_key(&r.payment_key))
            .await?
            .ok_or_else(|| ApiError::internal("payment record vanished"))?
            .decode()?;
    }
    finish(ctx, r, pr).await
}

async fn finish<S: Store>(
    ctx: &Ctx<S>,
    r: PaymentRecord,
    pr: &PayRequest<'_>,
) -> Result<Paid, ApiError> {
    match r.status.as_str() {
        FUNDED => {
            let idem = idem_for(&r, ctx.config.idempotency_ttl_secs);
            let headers = r.settle.as_ref().map(response_headers).unwrap_or_default();
            if let Some(mut resp) = idem.stored(&ctx.store).await? {
                resp.headers.extend(headers);
                return Ok(Paid::Replay(resp));
            }
            Ok(Paid::Funded {
                record: Box::new(r),
                idem,
                headers,
            })
        }
        FAILED => Err(refused(
            pr,
            "payload",
            format!(
                "settlement {} failed ({}); nothing was charged — sign a new payment",
                r.settlement_id,
                r.reason.as_deref().unwrap_or("refused")
            ),
        )),
        _ => Err(pending_problem(&r)),
    }
}

/// Settles the reconciler attempts for one payment before it only waits for the chain.
const MAX_RESETTLES: i64 = 3;

/// What one reconciler pass did.
#[derive(Serialize, Default, Debug, Clone, PartialEq)]
pub struct ReconcileReport {
    pub funded: usize,
    pub failed: usize,
    pub still_pending: usize,
    pub errors: usize,
}

/// Resolves settlements whose outcome was unknown, from the chain (see the module's rule 3).
/// Each pending payment is looked at no more often than `every_ms`.
pub async fn reconcile<S: Store, F: Facilitator, C: ChainReader>(
    ctx: &Ctx<S>,
    ports: &X402Ports<F, C>,
    every_ms: i64,
) -> Result<ReconcileReport, StoreError> {
    let mut report = ReconcileReport::default();
    for entry in ctx.store.query("X402PEND", "", None).await? {
        let last = entry
            .get_num("queued_at_ms")
            .max(entry.get_num("relayed_at_ms"));
        if now_ms() - last < every_ms {
            continue;
        }
        let key = entry.doc["payment_key"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let Some(item) = ctx.store.get(&record_key(&key)).await? else {
            tracing::error!(outbox = %entry.key, "x402 reconciler: outbox entry without a payment record; left alone");
            report.errors += 1;
            continue;
        };
        let r: PaymentRecord = item.decode()?;
        let from = r.status.clone();
        let resolved = match from.as_str() {
            FUNDED | FAILED => {
                ctx.store
                    .transact(vec![Write::Delete {
                        key: entry.key.clone(),
                        conds: vec![],
                    }])
                    .await?;
                continue;
            }
            SETTLING if now_ms() - r.claimed_at_ms < settle_lease_ms(ctx) => continue,
            _ => {
                let p = &r.payment;
                match ports
                    .chain
                    .authorization_used(&p.asset, &p.payer, &p.nonce)
                    .await
                {
                    Ok(true) => resolve_used(ctx, ports, r, &from).await?,
                    Ok(false) => {
                        let before = r
                            .payload
                            .payload
                            .pointer("/authorization/validBefore")
                            .and_then(|v| v.as_str())
                            .and_then(parse_u128)
                            .unwrap_or(0);
                        // Past its validBefore (with slack for the chain's clock) the
                        // authorization can never move money: failed, nothing charged.
                        if (now().unix_timestamp() as u128) > before + 30 {
                            fail(ctx, r, &from, "authorization_expired_unused").await?
                        } else if entry.get_num("tries") < MAX_RESETTLES {
                            // Settle again only what the facilitator still accepts: a payment
                            // that cannot move money fails at once instead of burning gas.
                            match ports.facilitator.verify(&r.payload, &r.requirements).await {
                                Ok(v) if v.is_valid => settle_claimed(ctx, ports, r).await?,
                                refused @ Ok(_) => after_verify(ctx, r, &from, refused).await?,
                                Err(_) => r,
                            }
                        } else {
                            r // it ends at validBefore: used by then, or failed
                        }
                    }
                    Err(e) => {
                        tracing::warn!(settlement_id = %r.settlement_id, error = %e, "x402 reconciler: chain unreadable; retried next pass");
                        report.errors += 1;
                        r
                    }
                }
            }
        };
        match resolved.status.as_str() {
            FUNDED => report.funded += 1,
            FAILED => report.failed += 1,
            _ => {
                report.still_pending += 1;
                let bumped = entry
                    .clone()
                    .num("relayed_at_ms", now_ms())
                    .num("tries", entry.get_num("tries") + 1);
                ctx.store
                    .transact(vec![Write::put_if(bumped, vec![Cond::Exists])])
                    .await
                    .or_else(|e| match e {
                        StoreError::ConditionFailed => Ok(()),
                        e => Err(e),
                    })?;
            }
        }
        tracing::info!(settlement_id = %resolved.settlement_id, status = %resolved.status, "x402 reconciler: pending settlement looked at");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_part_of_the_payment() {
        for (reason, field) in [
            ("invalid_exact_evm_payload_signature", "payload.signature"),
            (
                "invalid_exact_evm_insufficient_balance",
                "payload.authorization.from",
            ),
            (
                "invalid_exact_evm_payload_authorization_valid_before",
                "payload.authorization.validBefore",
            ),
            (
                "invalid_exact_evm_payload_authorization_valid_after",
                "payload.authorization.validAfter",
            ),
            (
                "invalid_exact_evm_nonce_already_used",
                "payload.authorization.nonce",
            ),
            ("something_else", "payload"),
        ] {
            assert_eq!(reason_field(reason), field, "{reason}");
        }
    }

    #[test]
    fn amounts_are_decimal_integers_only() {
        assert_eq!(parse_u128("10000"), Some(10_000));
        for bad in ["", "-1", "1e5", "0x10", "1 "] {
            assert_eq!(parse_u128(bad), None, "{bad}");
        }
    }
}
