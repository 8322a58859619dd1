//! Stage 6 — run contract. `POST /runs` checks the trust profile, quote and entitlement, scans the
//! evidence, then in one transaction writes the run, its contract and evidence, and holds the
//! quote's credits (conditional on availability); the run is then enqueued. Also: the full loop
//! payload (`GET /runs/{id}`), cancel (releases the hold) and evidence recovery (replay package).

use serde_json::json;
use tokenops::api::{
    commit, load_run, object_item, owned_object, request_hash, serve, Call, Commit, RunRecord,
};
use tokenops::config::Ctx;
use tokenops::error::{ApiError, StoreError};
use tokenops::evidence::{self, EvidenceBundle, EvidenceError, ReviewContext};
use tokenops::http::{ApiRequest, ApiResponse, Op};
use tokenops::ids::{new_id, now_rfc3339, parse_id, run_object_id};
use tokenops::model::*;
use tokenops::ports::RunQueue;
use tokenops::proof::jcs;
use tokenops::run_state::{RunState, Transition};
use tokenops::store::{Key, Store, Write};
use tokenops::x402::chain::ChainReader;
use tokenops::x402::facilitator::Facilitator;
use tokenops::x402::pay::{self, Paid, PayRequest, Purpose, X402Ports};
use tokenops::{money, rules};

pub async fn handle<S: Store, Q: RunQueue, F: Facilitator, C: ChainReader>(
    ctx: &Ctx<S>,
    queue: &Q,
    x402: Option<&X402Ports<F, C>>,
    req: ApiRequest,
) -> ApiResponse {
    serve(ctx, req, |call| async move {
        match call.req.operation {
            Op::CreateRun => create(ctx, queue, x402, call).await,
            Op::GetRun => {
                let rec = owned_run(ctx, &call).await?;
                Ok(ApiResponse::json(200, &rec.payload))
            }
            Op::CancelRun => cancel(ctx, call).await,
            Op::SupplyEvidence => supply_evidence(ctx, queue, call).await,
            other => Err(ApiError::internal(format!(
                "run_contract does not serve {other}"
            ))),
        }
    })
    .await
}

/// The run named in the path, if the caller owns it (else 404).
pub async fn owned_run<S: Store>(ctx: &Ctx<S>, call: &Call) -> Result<RunRecord, ApiError> {
    let agent = call.caller.agent()?;
    let id = parse_id("run", call.req.param("run_id"), "run_id")?;
    match load_run(&ctx.store, &id).await? {
        Some(r) if r.payload.agent_id == agent => Ok(r),
        _ => Err(ApiError::not_found("run_id", &id)),
    }
}

pub fn evidence_key(run_id: &str) -> Key {
    Key::object(&run_object_id("evidence", run_id))
}

/// Secrets are refused naming the field (never the value); CSV must parse.
fn check_evidence(bundle: &EvidenceBundle, ctx: &ReviewContext) -> Result<(), ApiError> {
    match evidence::review(bundle, ctx) {
        Ok(_) => Ok(()),
        Err(EvidenceError::Secret(s)) => Err(ApiError::new(
            422,
            "secret-in-evidence",
            "Evidence carries a secret",
            format!(
                "{} looks like a {}; evidence must be public-safe, nothing was stored",
                s.field, s.kind
            ),
            Some(&s.field),
        )),
        Err(EvidenceError::Csv { field, reason }) => Err(ApiError::invalid(
            &field,
            format!("not valid CSV: {reason}"),
        )),
    }
}

fn link_url<S>(ctx: &Ctx<S>, path: &str) -> String {
    ctx.config.url(path)
}

async fn create<S: Store, Q: RunQueue, F: Facilitator, C: ChainReader>(
    ctx: &Ctx<S>,
    queue: &Q,
    x402: Option<&X402Ports<F, C>>,
    call: Call,
) -> Result<ApiResponse, ApiError> {
    let agent = call.caller.agent()?.to_string();
    let r: RunRequest = call.req.json()?;
    let profile = quote::active_profile(ctx, &agent).await?;
    if r.trust_profile_id != profile.trust_profile_id {
        return Err(ApiError::invalid(
            "trust_profile_id",
            "not this agent's trust profile",
        ));
    }
    let quote_id = parse_id("quote", &r.quote_id, "quote_id")
        .map_err(|_| ApiError::invalid("quote_id", "not a quote id"))?;
    let q: Quote = owned_object(&ctx.store, &quote_id, &agent, "quote_id")
        .await?
        .decode()?;
    provider_route::check_quote_live(&q)?;
    if (q.requested_tool.as_str(), q.requested_capability.as_str())
        != (r.requested_tool.as_str(), r.requested_capability.as_str())
    {
        return Err(ApiError::invalid(
            "requested_capability",
            "requested_tool/requested_capability differ from the quote's",
        ));
    }
    let price = q.price_credits;
    if price > profile.limits.max_run_credits {
        return Err(ApiError::invalid(
            "quote_id",
            "the quote's price exceeds the trust profile's per-run limit",
        ));
    }
    let callback_url = match &r.callback_url {
        Some(u) => u.clone(),
        None => ctx
            .store
            .get(&Key::agent(&agent))
            .await?
            .map(|i| i.decode::<OnboardingRecord>())
            .transpose()?
            .map(|o| o.manifest.callback_url)
            .unwrap_or_default(),
    };
    rules::check_callback_url(
        &callback_url,
        ctx.config.allow_loopback_callbacks,
        "callback_url",
    )?;
    // Who pays: the entitlement named, or (x402) this request's payment. Everything a run can
    // be refused for is checked before a payment is asked for or taken.
    let x402_req = match (&ctx.config.x402, x402) {
        (Some(cfg), Some(ports)) => Some((
            ports,
            PayRequest {
                agent: &agent,
                quote_id: &q.quote_id,
                purpose: Purpose::Run,
                credits: price,
                requirements: cfg.requirements(price, provider_route::quote_ttl_secs(&q)),
                resource_url: link_url(ctx, "/runs"),
                description: "One TokenOps run (evidence review), paid per run",
                request_hash: request_hash(&call.req),
            },
        )),
        _ => None,
    };
    let payment = call.req.header(tokenops::x402::HEADER_SIGNATURE);
    let named = match (
        &r.credit_entitlement_id,
        payment.is_some() && x402_req.is_some(),
    ) {
        (Some(raw), false) => {
            let ent_id = parse_id("cred", raw, "credit_entitlement_id").map_err(|_| {
                ApiError::invalid("credit_entitlement_id", "not a credit entitlement id")
            })?;
            let item = owned_object(&ctx.store, &ent_id, &agent, "credit_entitlement_id").await?;
            let ent = credit_entitlement::entitlement_view(&item)?;
            if ent.status != "funded" || ent.balances.available < price {
                return Err(match &x402_req {
                    Some((_, pr)) => pay::required(
                        pr,
                        &format!(
                            "credit entitlement {ent_id} has {} available credits; the run needs {price}",
                            ent.balances.available
                        ),
                    ),
                    None => insufficient(&ent_id, ent.balances.available, price),
                });
            }
            Some(ent)
        }
        (None, false) if x402_req.is_none() => return Err(ApiError::invalid(
            "credit_entitlement_id",
            "required: name a funded credit entitlement (this deployment takes no x402 payments)",
        )),
        _ => None,
    };

    let run_id = new_id("run");
    let review_ctx = ReviewContext {
        run_id: run_id.clone(),
        requested_tool: r.requested_tool.clone(),
        requested_capability: r.requested_capability.clone(),
        credit_entitlement_id: named
            .as_ref()
            .map(|e| e.credit_entitlement_id.clone())
            .unwrap_or_default(),
        settlement_provider: Some(
            named
                .as_ref()
                .map_or(tokenops::x402::X402.to_string(), |e| e.provider.clone()),
        ),
        paid_quote_id: named.is_none().then(|| q.quote_id.clone()),
    };
    check_evidence(&r.evidence, &review_ctx)?;

    let (ent_id, settlement_id, provider, idem, paid_headers) = match named {
        Some(ent) => (
            ent.credit_entitlement_id,
            ent.settlement_id,
            ent.provider,
            call.idem.clone(),
            Default::default(),
        ),
        None => {
            let (ports, pr) = x402_req
                .as_ref()
                .ok_or_else(|| ApiError::internal("x402 request without x402"))?;
            let Some(header) = payment else {
                return Err(pay::required(pr, "this run is not paid for yet"));
            };
            match pay::pay(ctx, ports, header, pr).await? {
                Paid::Replay(resp) => return Ok(resp),
                Paid::Funded {
                    record,
                    idem,
                    headers,
                } => (
                    run_object_id("cred", &record.settlement_id),
                    record.settlement_id.clone(),
                    tokenops::x402::X402.to_string(),
                    Some(idem),
                    headers,
                ),
            }
        }
    };
    let evidence_digest =
        jcs::digest(&r.evidence).map_err(|e| ApiError::internal(e.to_string()))?;
    let (hold, mut writes) = money::hold(&ent_id, &agent, &run_id, price);
    let contract = RunContract {
        object_type: "run_contract".into(),
        run_contract_id: run_object_id("rc", &run_id),
        run_id: run_id.clone(),
        agent_id: agent.clone(),
        trust_profile_id: r.trust_profile_id.clone(),
        quote_id: q.quote_id.clone(),
        credit_entitlement_id: ent_id.clone(),
        settlement_id: settlement_id.clone(),
        provider,
        requested_tool: r.requested_tool,
        requested_capability: r.requested_capability,
        credits_held: price,
        hold_transfer_id: hold.transfer_id,
        callback_url,
        evidence_digest,
        created_at: now_rfc3339(),
    };
    let now = now_rfc3339();
    let mut payload = FullLoopPayload {
        loop_type: LOOP_TYPE.into(),
        run_id: run_id.clone(),
        operating_tool: OPERATING_TOOL.into(),
        path: PATH.iter().map(|s| s.to_string()).collect(),
        state: RunState::Queued,
        next_action: String::new(),
        agent_id: agent.clone(),
        objects: Default::default(),
        credits: price,
        replays: 0,
        attested: false,
        created_at: now.clone(),
        updated_at: now,
        failure: None,
        redrives: 0,
    };
    payload.link(
        "onboarding",
        &agent,
        "agent_onboarding",
        link_url(ctx, &format!("/agents/{agent}")),
        None,
    );
    payload.link(
        "trust",
        &profile.trust_profile_id,
        "trust_profile",
        link_url(ctx, &format!("/agents/{agent}")),
        None,
    );
    payload.link(
        "quote",
        &q.quote_id,
        "quote",
        link_url(ctx, &format!("/quotes/{}", q.quote_id)),
        None,
    );
    payload.link(
        "provider_route",
        &settlement_id,
        "provider_route",
        link_url(ctx, &format!("/settlements/{settlement_id}")),
        None,
    );
    payload.link(
        "credit_entitlement",
        &ent_id,
        "credit_entitlement",
        link_url(ctx, &format!("/credit-entitlements/{ent_id}")),
        None,
    );
    let digest = jcs::digest(&contract).ok();
    payload.link(
        "run_contract",
        &contract.run_contract_id,
        "run_contract",
        link_url(ctx, &format!("/runs/{run_id}")),
        digest,
    );
    payload.refresh_next_action();
    writes.push(Write::create(RunRecord::new_item(&payload)?));
    writes.push(Write::create(object_item(
        &contract.run_contract_id,
        "run_contract",
        &agent,
        Some(&run_id),
        &contract,
    )?));
    writes.push(Write::create(object_item(
        &run_object_id("evidence", &run_id),
        "evidence_bundle",
        &agent,
        Some(&run_id),
        &r.evidence,
    )?));
    writes.push(tokenops::queue::pending_write(&RunMessage {
        run_id: run_id.clone(),
        ..Default::default()
    }));
    let body = RunAccepted {
        run_id: run_id.clone(),
        state: RunState::Queued,
        run_contract: contract,
        links: [("run".to_string(), link_url(ctx, &format!("/runs/{run_id}")))].into(),
    };
    let mut resp = match commit(&ctx.store, idem.as_ref(), Commit::new(202, &body, writes)).await {
        Ok(r) => r,
        // The hold's condition failed: someone spent the credits between our read and the write.
        Err(StoreError::ConditionFailed) => {
            let now = owned_object(&ctx.store, &ent_id, &agent, "credit_entitlement_id").await?;
            return Err(insufficient(&ent_id, now.get_num("available"), price));
        }
        Err(e) => return Err(e.into()),
    };
    // Enqueue after commit. If this request lost a race to an identical one (same key), it sends
    // too while the run is still queued: the queue stage dispatches a run only once. A send lost
    // after the commit is not re-sent by a retry (the stored response is replayed); the pending
    // index (`PENDING/<run>`) records it — see the notes on an outbox relay.
    resp.headers.extend(paid_headers);
    let run_id = resp.json_body()["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let still_queued = resp.header("idempotent-replayed").is_none()
        || load_run(&ctx.store, &run_id)
            .await?
            .is_some_and(|r| r.payload.state == RunState::Queued);
    if still_queued {
        queue
            .send(&RunMessage {
                run_id,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_or_else(|e| {
                // Accepted all the same: the run is in the pending outbox, the relay sends it.
                tracing::warn!(error = %e, "run stored but not enqueued; the relay re-sends it");
            });
    }
    Ok(resp)
}

fn insufficient(ent_id: &str, available: i64, price: i64) -> ApiError {
    ApiError::new(
        409,
        "insufficient-credits",
        "Insufficient credits",
        format!(
            "credit entitlement {ent_id} has {available} available credits; the run needs {price}"
        ),
        Some("credit_entitlement_id"),
    )
}

async fn cancel<S: Store>(ctx: &Ctx<S>, call: Call) -> Result<ApiResponse, ApiError> {
    for _ in 0..3 {
        let rec = owned_run(ctx, &call).await?;
        match rec.payload.state.check(RunState::Cancelled) {
            Transition::AlreadyDone => return Ok(ApiResponse::json(200, &rec.payload)),
            Transition::Refused => {
                return Err(ApiError::conflict(
                    "invalid-transition",
                    "state",
                    format!(
                        "a run in state {} cannot be cancelled",
                        rec.payload.state.as_str()
                    ),
                ))
            }
            Transition::Go => {}
        }
        let contract: RunContract = owned_object(
            &ctx.store,
            &run_object_id("rc", &rec.payload.run_id),
            &rec.payload.agent_id,
            "run_id",
        )
        .await?
        .decode()?;
        let (_, mut writes) = money::release(
            &contract.credit_entitlement_id,
            &contract.agent_id,
            &contract.run_id,
            contract.credits_held,
        );
        let mut payload = rec.payload.clone();
        payload.state = RunState::Cancelled;
        writes.push(rec.save(payload.clone())?);
        match commit(
            &ctx.store,
            call.idem.as_ref(),
            Commit::new(200, &payload, writes),
        )
        .await
        {
            Ok(resp) => return Ok(resp),
            Err(StoreError::ConditionFailed) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "concurrent-update",
        "state",
        "the run changed concurrently; retry",
    ))
}

async fn supply_evidence<S: Store, Q: RunQueue>(
    ctx: &Ctx<S>,
    queue: &Q,
    call: Call,
) -> Result<ApiResponse, ApiError> {
    let rec = owned_run(ctx, &call).await?;
    if rec.payload.state.check(RunState::Replaying) != Transition::Go {
        return Err(ApiError::conflict(
            "invalid-transition",
            "state",
            format!(
                "evidence can be supplied only to a run waiting on evidence; this one is {}",
                rec.payload.state.as_str()
            ),
        ));
    }
    let more: EvidenceSupplement = call.req.json()?;
    let run_id = rec.payload.run_id.clone();
    let agent = rec.payload.agent_id.clone();
    let contract: RunContract =
        owned_object(&ctx.store, &run_object_id("rc", &run_id), &agent, "run_id")
            .await?
            .decode()?;
    let review_ctx = ReviewContext {
        run_id: run_id.clone(),
        requested_tool: contract.requested_tool.clone(),
        requested_capability: contract.requested_capability.clone(),
        credit_entitlement_id: contract.credit_entitlement_id.clone(),
        settlement_provider: Some(contract.provider.clone()),
        paid_quote_id: None,
    };
    check_evidence(&more.evidence, &review_ctx)?;
    let ev_item = ctx
        .store
        .get(&evidence_key(&run_id))
        .await?
        .ok_or_else(|| ApiError::internal("run has no evidence record"))?;
    let mut bundle: EvidenceBundle = ev_item.decode()?;
    let before =
        evidence::review(&bundle, &review_ctx).map_err(|e| ApiError::internal(e.to_string()))?;
    bundle.merge(more.evidence.clone());
    let exception_id = rec
        .payload
        .objects
        .get("exception_recovery")
        .and_then(|l| {
            l.iter()
                .rev()
                .find(|l| l.object_type == "agent_exception_ticket")
        })
        .map(|l| l.id.clone())
        .unwrap_or_default();
    let n = rec.payload.replays + 1;
    let replay = ReplayPackage {
        object_type: "replay_package".into(),
        replay_id: format!("{}_{n}", run_object_id("replay", &run_id)),
        run_id: run_id.clone(),
        exception_id: exception_id.clone(),
        resume_from: "tokenops_execution".into(),
        known_state: json!({"state": rec.payload.state, "credits_held": contract.credits_held, "evidence_score": before.evidence_score, "open_items": before.open_items}),
        changes: json!({"added_records": more.evidence.records.len(), "added_csv_exports": more.evidence.csv_exports.len(), "added_files": more.evidence.file_manifest.len(), "evidence_digest": jcs::digest(&bundle).unwrap_or_default()}),
        safe_to_replay: true,
        replay: n,
        created_at: now_rfc3339(),
    };
    let mut payload = rec.payload.clone();
    payload.state = RunState::Replaying;
    payload.replays = n;
    payload.link(
        "exception_recovery",
        &replay.replay_id,
        "replay_package",
        link_url(ctx, &format!("/exceptions/{}", replay.replay_id)),
        jcs::digest(&replay).ok(),
    );
    let mut writes = vec![Write::create(object_item(
        &replay.replay_id,
        "replay_package",
        &agent,
        Some(&run_id),
        &replay,
    )?)];
    writes.push(Write::put(object_item(
        &run_object_id("evidence", &run_id),
        "evidence_bundle",
        &agent,
        Some(&run_id),
        &bundle,
    )?));
    if let Some(t) = ctx.store.get(&Key::object(&exception_id)).await? {
        let mut ticket: ExceptionTicket = t.decode()?;
        ticket.status = "resolved".into();
        ticket.safe_to_replay = true;
        writes.push(Write::put(object_item(
            &exception_id,
            "agent_exception_ticket",
            &agent,
            Some(&run_id),
            &ticket,
        )?));
    }
    writes.push(rec.save(payload)?);
    writes.push(tokenops::queue::pending_write(&RunMessage {
        run_id: run_id.clone(),
        replay: n,
        ..Default::default()
    }));
    let resp = match commit(
        &ctx.store,
        call.idem.as_ref(),
        Commit::new(202, &replay, writes),
    )
    .await
    {
        Ok(r) => r,
        Err(StoreError::ConditionFailed) => {
            return Err(ApiError::conflict(
                "concurrent-update",
                "state",
                "the run changed concurrently; retry",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    if resp.header("idempotent-replayed").is_none() {
        queue
            .send(&RunMessage {
                run_id,
                replay: n,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "replay stored but not enqueued; the relay re-sends it");
            });
    }
    Ok(resp)
}
