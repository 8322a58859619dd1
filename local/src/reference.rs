//! `tokenops reference-run`: starts everything in-process on a fresh data dir and plays an agent
//! through all 14 stages over HTTP; then the evidence-gap → exception → evidence → replay →
//! delivered scenario. Progress goes to stderr; the full loop payload of the reference run is the
//! last JSON object on stdout. Fails unless the run reached `callback_delivered`, its callback was
//! received with a valid signature, and the attestation and ledger verify.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokenops::model::PATH;
use tokenops::proof::{dsse, ledger};

use crate::agent::{
    full_evidence, missing_evidence, partial_evidence, Agent, AgentError, Receiver,
};

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("check failed: {0}")]
    Check(String),
}

fn progress(step: usize, stage: &str, detail: &str) {
    eprintln!("[{step:>2}/14] {stage:<20} {detail}");
}

/// Prints each stage as it appears on the run, until the run is delivered and attested.
pub(crate) async fn follow(
    agent: &Agent,
    run_id: &str,
    shown: &mut usize,
    timeout: Duration,
) -> Result<Value, ReferenceError> {
    let start = Instant::now();
    loop {
        let run = agent.ok("GET", &format!("/runs/{run_id}"), None).await?;
        while *shown < PATH.len() {
            let stage = PATH[*shown];
            let Some(link) = run["objects"][stage].as_array().and_then(|l| l.first()) else {
                break;
            };
            progress(
                *shown + 1,
                stage,
                &format!(
                    "{} {}",
                    link["object_type"].as_str().unwrap_or(""),
                    link["id"].as_str().unwrap_or("")
                ),
            );
            *shown += 1;
        }
        let state = run["state"].as_str().unwrap_or("");
        if (state == "callback_delivered" && run["attested"] == true)
            || state == "exception_open"
            || state == "cancelled"
        {
            return Ok(run);
        }
        if start.elapsed() > timeout {
            return Err(ReferenceError::Check(format!(
                "run {run_id} stuck in state {state}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Verifies the run's attestation against the served keys and the agent's ledger chain.
pub async fn verify_run(agent: &Agent, run: &Value) -> Result<(), ReferenceError> {
    let att_id = run["objects"]["attestation"][0]["id"]
        .as_str()
        .ok_or_else(|| ReferenceError::Check("no attestation".into()))?;
    let att = agent
        .ok("GET", &format!("/attestations/{att_id}"), None)
        .await?;
    let keys: Vec<dsse::PublicKeyInfo> =
        serde_json::from_value(agent.ok("GET", "/keys", None).await?["keys"].clone())
            .map_err(|e| ReferenceError::Check(e.to_string()))?;
    let env: dsse::Envelope = serde_json::from_value(att["envelope"].clone())
        .map_err(|e| ReferenceError::Check(e.to_string()))?;
    let st = dsse::verify_envelope(&env, &keys)
        .map_err(|e| ReferenceError::Check(format!("attestation does not verify: {e}")))?;
    if st.subject.len() != 5 {
        return Err(ReferenceError::Check(
            "attestation must have 5 subjects".into(),
        ));
    }
    let export = agent.ok("GET", "/ledger", None).await?;
    let entries: Vec<ledger::LedgerEntry> = serde_json::from_value(export["entries"].clone())
        .map_err(|e| ReferenceError::Check(e.to_string()))?;
    let report = ledger::verify_chain(&entries);
    if !report.valid {
        return Err(ReferenceError::Check(format!(
            "ledger does not verify: {:?}",
            report.first_broken
        )));
    }
    let served = agent.ok("GET", "/ledger/verify", None).await?;
    if served["valid"] != true {
        return Err(ReferenceError::Check(
            "GET /ledger/verify reports a broken chain".into(),
        ));
    }
    Ok(())
}

/// Both scenarios against a runtime at `base`; returns the reference run's full loop payload.
pub async fn play(base: &str) -> Result<Value, ReferenceError> {
    let receiver = Receiver::default();
    let cb = receiver.start().await?;
    let t0 = Instant::now();

    let agent = Agent::onboard(base, "reference-agent", &cb).await?;
    receiver.add_secret(&agent.callback_secret);
    progress(
        1,
        "onboarding",
        &format!("agent {} — trust_review_passed", agent.agent_id),
    );
    progress(
        2,
        "trust",
        &format!(
            "trust profile {} active; credential envelope delivered once",
            agent.trust_profile_id
        ),
    );
    let (quote, route, ent) = agent.fund(10).await?;
    progress(
        3,
        "quote",
        &format!(
            "{} — {} credit(s), expires {}",
            quote["quote_id"].as_str().unwrap_or(""),
            quote["price_credits"],
            quote["expires_at"].as_str().unwrap_or("")
        ),
    );
    progress(
        4,
        "provider_route",
        &format!(
            "{} via test_provider, payment request {}",
            route["settlement_id"].as_str().unwrap_or(""),
            route["payment_request"]["payment_request_id"]
                .as_str()
                .unwrap_or("")
        ),
    );
    progress(
        5,
        "credit_entitlement",
        &format!(
            "{} funded with {} credits (signed provider webhook)",
            ent["credit_entitlement_id"].as_str().unwrap_or(""),
            ent["balances"]["funded"]
        ),
    );

    let ent_id = ent["credit_entitlement_id"].as_str().unwrap_or_default();
    let stl = route["settlement_id"].as_str().unwrap_or_default();
    let created = agent
        .ok(
            "POST",
            "/runs",
            Some(&agent.run_request(&quote, &ent, full_evidence(ent_id, stl), &cb)),
        )
        .await?;
    let run_id = created["run_id"].as_str().unwrap_or_default().to_string();
    let mut shown = 5;
    let run = follow(&agent, &run_id, &mut shown, Duration::from_secs(60)).await?;
    if run["state"] != "callback_delivered" || run["next_action"] != "ready_for_downstream_agent" {
        return Err(ReferenceError::Check(format!(
            "run ended in {} / {}",
            run["state"], run["next_action"]
        )));
    }
    if receiver.verified_for(&run_id).is_empty() {
        return Err(ReferenceError::Check(
            "no verified callback received".into(),
        ));
    }
    verify_run(&agent, &run).await?;
    eprintln!("reference run {run_id}: callback_delivered, callback signature verified, attestation and ledger verify ({} ms)", t0.elapsed().as_millis());

    // Scenario 2: evidence gap → exception ticket → evidence supplied → replay → delivered.
    eprintln!(
        "--- scenario: evidence gap → exception ticket → evidence supplied → replay → delivered"
    );
    let (quote2, route2, ent2) = agent.fund(1).await?;
    let (ent2_id, stl2) = (
        ent2["credit_entitlement_id"].as_str().unwrap_or_default(),
        route2["settlement_id"].as_str().unwrap_or_default(),
    );
    let created = agent
        .ok(
            "POST",
            "/runs",
            Some(&agent.run_request(&quote2, &ent2, partial_evidence(ent2_id, stl2), &cb)),
        )
        .await?;
    let gap_id = created["run_id"].as_str().unwrap_or_default().to_string();
    let mut shown2 = PATH.len();
    let waiting = follow(&agent, &gap_id, &mut shown2, Duration::from_secs(60)).await?;
    let exc_id = waiting["objects"]["exception_recovery"][0]["id"]
        .as_str()
        .ok_or_else(|| {
            ReferenceError::Check(format!("no exception ticket; run is {}", waiting["state"]))
        })?;
    let ticket = agent
        .ok("GET", &format!("/exceptions/{exc_id}"), None)
        .await?;
    eprintln!(
        "exception ticket {exc_id}: {} / {}, missing {}",
        ticket["exception_type"], ticket["status"], ticket["missing_items"]
    );
    let replay = agent
        .ok(
            "POST",
            &format!("/runs/{gap_id}/evidence"),
            Some(&missing_evidence(ent2_id, stl2)),
        )
        .await?;
    eprintln!(
        "replay package {}: resume_from {}, safe_to_replay {}",
        replay["replay_id"].as_str().unwrap_or(""),
        replay["resume_from"],
        replay["safe_to_replay"]
    );
    let done = follow(&agent, &gap_id, &mut shown2, Duration::from_secs(60)).await?;
    if done["state"] != "callback_delivered" || done["attested"] != true {
        return Err(ReferenceError::Check(format!(
            "replayed run ended in {}",
            done["state"]
        )));
    }
    verify_run(&agent, &done).await?;
    eprintln!("evidence-gap run {gap_id}: replayed and delivered; attestation and ledger verify");
    eprintln!("reference-run finished in {} ms", t0.elapsed().as_millis());
    Ok(run)
}
