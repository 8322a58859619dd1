//! A scripted agent: the HTTP calls an agent makes through the loop, and a callback receiver that
//! verifies the Standard Webhooks signature. Used by `reference-run`, `bench` and the tests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use tokenops::proof::webhook;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{method} {path} → {status}: {body}")]
    Http {
        method: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Transport(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

#[derive(Clone)]
pub struct Agent {
    pub base: String,
    pub http: reqwest::Client,
    pub access_key: Option<String>,
    pub agent_id: String,
    pub callback_secret: String,
    pub trust_profile_id: String,
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub content_type: String,
    /// Response headers, names lower-cased.
    pub headers: std::collections::BTreeMap<String, String>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

impl Agent {
    pub fn anonymous(base: &str) -> Agent {
        Agent {
            base: base.trim_end_matches('/').into(),
            http: reqwest::Client::new(),
            access_key: None,
            agent_id: String::new(),
            callback_secret: String::new(),
            trust_profile_id: String::new(),
        }
    }

    /// Any request; returns status and JSON body whatever the status.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        idem: Option<&str>,
    ) -> Result<Resp, AgentError> {
        let idem: Vec<(&str, &str)> = idem.map(|i| ("idempotency-key", i)).into_iter().collect();
        self.call_with(method, path, body, &idem).await
    }

    /// [`Agent::call`] with any extra request headers (an x402 `PAYMENT-SIGNATURE`, say).
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Resp, AgentError> {
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| AgentError::Transport(e.to_string()))?;
        let mut req = self.http.request(m, format!("{}{path}", self.base));
        if let Some(k) = &self.access_key {
            req = req.bearer_auth(k);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req
            .send()
            .await
            .map_err(|e| AgentError::Transport(e.to_string()))?;
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = r
            .text()
            .await
            .map_err(|e| AgentError::Transport(e.to_string()))?;
        Ok(Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            content_type,
            headers,
        })
    }

    /// A request that must succeed (2xx).
    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AgentError> {
        let r = self
            .call(method, path, body, Some(&ulid::Ulid::new().to_string()))
            .await?;
        if !(200..300).contains(&r.status) {
            return Err(AgentError::Http {
                method: method.into(),
                path: path.into(),
                status: r.status,
                body: r.body.to_string(),
            });
        }
        Ok(r.body)
    }

    /// Stages 1–2: onboard and claim credentials.
    /// Starts a callback [`Receiver`] and onboards an agent whose callbacks go to it (the
    /// receiver verifies them with the agent's secret): the agent, its receiver, the URL.
    pub async fn onboard_listening(
        base: &str,
        name: &str,
    ) -> Result<(Agent, Receiver, String), AgentError> {
        let receiver = Receiver::default();
        let url = receiver.start().await?;
        let agent = Agent::onboard(base, name, &url).await?;
        receiver.add_secret(&agent.callback_secret);
        Ok((agent, receiver, url))
    }

    pub async fn onboard(base: &str, name: &str, callback_url: &str) -> Result<Agent, AgentError> {
        let mut a = Agent::anonymous(base);
        let manifest = json!({"name": name, "owner_contact": "ops@agent.example.com", "requested_tools": ["tokenops"], "callback_url": callback_url, "description": "reference agent"});
        let onboarded = a.ok("POST", "/agents", Some(&manifest)).await?;
        a.agent_id = onboarded["agent_id"].as_str().unwrap_or_default().into();
        a.trust_profile_id = onboarded["trust_profile_id"]
            .as_str()
            .unwrap_or_default()
            .into();
        let env = a
            .ok(
                "POST",
                &format!("/agents/{}/credentials", a.agent_id),
                Some(&json!({"claim_token": onboarded["claim_token"]})),
            )
            .await?;
        a.access_key = env["access_key"].as_str().map(str::to_string);
        a.callback_secret = env["callback_signing_secret"]
            .as_str()
            .unwrap_or_default()
            .into();
        Ok(a)
    }

    /// Stages 3–5: quote, provider route, and wait for the provider's confirmation to fund it.
    pub async fn fund(&self, credits: i64) -> Result<(Value, Value, Value), AgentError> {
        let quote = self.ok("POST", "/quotes", Some(&json!({"requested_tool": "tokenops", "requested_capability": "tokenops_result_package"}))).await?;
        let route = self.ok("POST", "/settlements", Some(&json!({"quote_id": quote["quote_id"], "provider": "test_provider", "credits": credits}))).await?;
        let ent_id = route["credit_entitlement_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ent = self
            .wait(
                &format!("/credit-entitlements/{ent_id}"),
                Duration::from_secs(20),
                |e| e["status"] == "funded",
            )
            .await?;
        Ok((quote, route, ent))
    }

    pub fn run_request(
        &self,
        quote: &Value,
        ent: &Value,
        evidence: Value,
        callback_url: &str,
    ) -> Value {
        json!({
            "trust_profile_id": self.trust_profile_id,
            "quote_id": quote["quote_id"],
            "credit_entitlement_id": ent["credit_entitlement_id"],
            "requested_tool": "tokenops",
            "requested_capability": "tokenops_result_package",
            "evidence": evidence,
            "callback_url": callback_url,
        })
    }

    /// Polls `path` until `done` holds.
    pub async fn wait(
        &self,
        path: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value, AgentError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(10);
        loop {
            let r = self.call("GET", path, None, None).await?;
            if r.status == 200 && done(&r.body) {
                return Ok(r.body);
            }
            if start.elapsed() > timeout {
                return Err(AgentError::Timeout(format!("{path} (last: {})", r.body)));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }
}

/// The evidence bundles every driver sends — this agent, the MCP and typed-client drivers
/// (local/mcp, local/clients, local/x402) — from one place, `events/evidence/`, ids filled in.
fn evidence(template: &str, ids: &[(&str, &str)]) -> Value {
    let mut text = template.to_string();
    for (name, value) in ids {
        text = text.replace(&format!("{{{{{name}}}}}"), value);
    }
    // The templates are part of the build; `evidence_templates_are_json` holds them to it.
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

const FULL_EVIDENCE: &str = include_str!("../../events/evidence/full.json");
const PAID_EVIDENCE: &str = include_str!("../../events/evidence/paid.json");

/// The evidence of a complete, consistent run.
pub fn full_evidence(ent_id: &str, settlement_id: &str) -> Value {
    let payment_request = format!("payreq_{}", tokenops::ids::suffix(settlement_id));
    evidence(
        FULL_EVIDENCE,
        &[
            ("credit_entitlement_id", ent_id),
            ("settlement_id", settlement_id),
            ("payment_request_id", &payment_request),
        ],
    )
}

/// Evidence for a run paid over x402 in its own request: the settlement is an x402 one, and the
/// ledger entry and usage receipt name the quote (the entitlement is created by the paying
/// request, so it cannot be named in advance).
pub fn paid_evidence(quote_id: &str) -> Value {
    evidence(PAID_EVIDENCE, &[("quote_id", quote_id)])
}

/// The seed's partial case: payment request and usage receipt missing.
pub fn partial_evidence(ent_id: &str, settlement_id: &str) -> Value {
    let mut e = full_evidence(ent_id, settlement_id);
    let records = e["records"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    e["records"] = Value::Array(
        records
            .into_iter()
            .filter(|r| r["category"] != "payment_request" && r["category"] != "usage_receipt")
            .collect(),
    );
    e
}

/// What the missing part of [`partial_evidence`] looks like when the agent supplies it.
pub fn missing_evidence(ent_id: &str, settlement_id: &str) -> Value {
    let full = full_evidence(ent_id, settlement_id);
    let records: Vec<Value> = full["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["category"] == "payment_request" || r["category"] == "usage_receipt")
        .cloned()
        .collect();
    json!({"evidence": {"records": records}})
}

/// A callback receiver on loopback that verifies every delivery's signature.
#[derive(Clone, Default)]
pub struct Receiver {
    pub secrets: Arc<Mutex<Vec<String>>>,
    pub verified: Arc<Mutex<Vec<Value>>>,
    /// Every verified delivery as received: (webhook-id, webhook-timestamp, webhook-signature,
    /// body), for checks by an independent Standard Webhooks implementation.
    pub raw: Arc<Mutex<Vec<[String; 4]>>>,
    pub rejected: Arc<Mutex<u32>>,
    /// Answer 503 to this many deliveries first (to exercise retries).
    pub fail_first: Arc<Mutex<u32>>,
    /// Woken by every verified delivery: [`Receiver::wait_for`] waits on it instead of polling.
    pub arrived: Arc<tokio::sync::Notify>,
}

impl Receiver {
    pub async fn start(&self) -> Result<String, AgentError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| AgentError::Transport(e.to_string()))?;
        let url = format!(
            "http://{}/callbacks",
            listener
                .local_addr()
                .map_err(|e| AgentError::Transport(e.to_string()))?
        );
        let router = axum::Router::new()
            .route("/callbacks", axum::routing::post(receive))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(url)
    }

    pub fn add_secret(&self, s: &str) {
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(s.to_string());
    }

    /// Waits until a verified delivery for `run_id` is here (`true`) or `timeout` passes
    /// (`false`). Woken by deliveries: a bench with 64 runs waiting costs nothing while they go.
    pub async fn wait_for(&self, run_id: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a delivery between the two still wakes us.
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.verified_for(run_id).is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    pub fn verified_for(&self, run_id: &str) -> Vec<Value> {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|v| v["run_id"] == run_id)
            .cloned()
            .collect()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    {
        let mut f = r.fail_first.lock().unwrap_or_else(|p| p.into_inner());
        if *f > 0 {
            *f -= 1;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let ts: i64 = h(webhook::HEADER_TIMESTAMP).parse().unwrap_or(0);
    let now = tokenops::ids::now().unix_timestamp();
    let secrets = r.secrets.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ok = secrets.iter().any(|s| {
        webhook::verify(
            s,
            &h(webhook::HEADER_ID),
            ts,
            &h(webhook::HEADER_SIGNATURE),
            &body,
            now,
            webhook::DEFAULT_TOLERANCE_SECS,
        )
        .is_ok()
    });
    if !ok {
        *r.rejected.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        return StatusCode::UNAUTHORIZED;
    }
    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
        r.verified.lock().unwrap_or_else(|p| p.into_inner()).push(v);
        r.arrived.notify_waiters();
    }
    r.raw.lock().unwrap_or_else(|p| p.into_inner()).push([
        h(webhook::HEADER_ID),
        h(webhook::HEADER_TIMESTAMP),
        h(webhook::HEADER_SIGNATURE),
        String::from_utf8_lossy(&body).into_owned(),
    ]);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    #[test]
    fn evidence_templates_are_json_with_every_id_filled() {
        let full = super::full_evidence("cred_1", "stl_01abc");
        assert_eq!(full["records"].as_array().unwrap().len(), 5);
        assert!(!full.to_string().contains("{{"), "{full}");
        assert_eq!(
            full["records"][1]["data"]["payment_request_id"],
            "payreq_01abc"
        );
        let paid = super::paid_evidence("quote_1");
        assert_eq!(
            paid["records"][2]["data"]["credit_entitlement_id"],
            "quote_1"
        );
        assert!(!paid.to_string().contains("{{"), "{paid}");
    }
}
