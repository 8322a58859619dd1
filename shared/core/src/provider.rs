//! Settlement providers. `test_provider` behaves like a real provider in test mode: told about a
//! payment request, it confirms it shortly after by calling our confirmation webhook, signed with
//! its secret (Standard Webhooks scheme), so the whole money path runs without a payment network.

use std::time::Duration;

use crate::api::object_item;
use crate::error::StoreError;
use crate::model::{ProviderConfirmation, ProviderRoute, SettlementConfirmation};
use crate::ports::SettlementProvider;
use crate::proof::webhook;
use crate::store::{Item, Key, Write};

pub const TEST_PROVIDER: &str = "test_provider";
pub const PROVIDERS: &[&str] = &[TEST_PROVIDER];

/// The payment outbox: a payment request waiting for its provider's confirmation
/// (`PAYREQ/<settlement_id>`), written with the route and deleted by the funding transaction.
/// The relay asks the provider again for entries older than its bound, and fails the request
/// (route and entitlement `failed`) once its attempts are spent, so every payment request ends
/// funded or failed whatever dies when.
pub fn payment_outbox_key(settlement_id: &str) -> Key {
    Key::new("PAYREQ", settlement_id)
}

pub fn payment_outbox_write(route: &ProviderRoute) -> Result<Write, StoreError> {
    let now_ms = (crate::ids::now().unix_timestamp_nanos() / 1_000_000) as i64;
    Ok(Write::put(
        Item::of(
            payment_outbox_key(&route.settlement_id),
            "payment_outbox",
            Some(&route.agent_id),
            route,
        )?
        .num("queued_at_ms", now_ms)
        .num("tries", 0),
    ))
}

pub fn payment_settled_write(settlement_id: &str) -> Write {
    Write::Delete {
        key: payment_outbox_key(settlement_id),
        conds: vec![],
    }
}

/// Funding a settlement, for every provider: the double-entry transfer (conditional on the
/// entitlement still awaiting funding, so it happens once), the confirmation object, the route
/// (`confirmed`, as given) and the removal of the settlement's outbox entry — the writes of one
/// transaction, with the confirmation to answer with.
pub fn funding_writes(
    confirmed: &ProviderRoute,
    provider_event_id: &str,
    outbox: Key,
) -> Result<(SettlementConfirmation, Vec<Write>), StoreError> {
    let sid = &confirmed.settlement_id;
    let owner = &confirmed.agent_id;
    let (transfer, mut writes) = crate::money::fund(
        &confirmed.credit_entitlement_id,
        owner,
        &confirmed.provider,
        sid,
        confirmed.credits,
    );
    let confirmation = SettlementConfirmation {
        object_type: "settlement_confirmation".into(),
        confirmation_id: crate::ids::run_object_id("conf", sid),
        settlement_id: sid.clone(),
        provider: confirmed.provider.clone(),
        provider_event_id: provider_event_id.chars().take(200).collect(),
        amount_credits: confirmed.credits,
        signature_verified: true,
        funding_transfer_id: transfer.transfer_id,
        confirmed_at: crate::ids::now_rfc3339(),
    };
    writes.push(Write::create(object_item(
        &confirmation.confirmation_id,
        "settlement_confirmation",
        owner,
        None,
        &confirmation,
    )?));
    writes.push(Write::put(object_item(
        sid,
        "provider_route",
        owner,
        None,
        confirmed,
    )?));
    writes.push(Write::Delete {
        key: outbox,
        conds: vec![],
    });
    Ok((confirmation, writes))
}

/// A webhook ready to send: (headers, body).
pub type SignedWebhook = (Vec<(String, String)>, Vec<u8>);

#[derive(Clone)]
pub struct TestProvider {
    http: reqwest::Client,
    api_base: String,
    secret: String,
    delay: Duration,
    /// Confirm before `request_payment` returns (Lambda: a sandbox is frozen once it has
    /// answered, so a background task would not run); otherwise confirm from a background task.
    inline: bool,
}

impl TestProvider {
    pub fn new(api_base: &str, secret: &str, delay: Duration) -> Self {
        TestProvider {
            http: reqwest::Client::new(),
            api_base: api_base.trim_end_matches('/').into(),
            secret: secret.into(),
            delay,
            inline: false,
        }
    }

    /// Confirmation before `request_payment` returns, for runtimes that freeze after a response.
    pub fn confirm_inline(mut self) -> Self {
        self.inline = true;
        self
    }

    /// Posts the signed confirmation, retrying transport and 5xx failures with backoff.
    async fn confirm(self, route: ProviderRoute) {
        tokio::time::sleep(self.delay).await;
        let event_id = format!("evt_{}", crate::ids::suffix(&route.settlement_id));
        let url = format!("{}/providers/{TEST_PROVIDER}/confirmations", self.api_base);
        for attempt in 0..6u32 {
            let Ok((headers, body)) =
                TestProvider::signed_confirmation(&self.secret, &route, &event_id)
            else {
                return;
            };
            let mut req = self.http.post(&url).body(body);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() || r.status().is_client_error() => return,
                _ => tokio::time::sleep(Duration::from_millis(100 << attempt)).await,
            }
        }
        tracing::warn!(settlement_id = %route.settlement_id, "test_provider gave up confirming");
    }

    /// The signed webhook the provider sends: (headers, body).
    pub fn signed_confirmation(
        secret: &str,
        route: &ProviderRoute,
        event_id: &str,
    ) -> Result<SignedWebhook, String> {
        let body = serde_json::to_vec(&ProviderConfirmation {
            provider_event_id: event_id.into(),
            settlement_reference: route.settlement_id.clone(),
            payment_request_id: route.payment_request.payment_request_id.clone(),
            amount_credits: route.credits,
            status: "paid".into(),
        })
        .map_err(|e| e.to_string())?;
        let ts = crate::ids::now().unix_timestamp();
        let sig = webhook::sign(secret, event_id, ts, &body).map_err(|e| e.to_string())?;
        Ok((
            vec![
                (webhook::HEADER_ID.into(), event_id.into()),
                (webhook::HEADER_TIMESTAMP.into(), ts.to_string()),
                (webhook::HEADER_SIGNATURE.into(), sig),
                ("content-type".into(), "application/json".into()),
            ],
            body,
        ))
    }
}

impl SettlementProvider for TestProvider {
    async fn request_payment(&self, route: &ProviderRoute) -> Result<(), String> {
        // Like a real provider, the confirmation arrives later and is retried until accepted.
        let confirm = self.clone().confirm(route.clone());
        if self.inline {
            confirm.await;
        } else {
            tokio::spawn(confirm);
        }
        Ok(())
    }
}
