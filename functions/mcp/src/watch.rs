//! Updates on `tokenops://runs/{run_id}` (`subscriptions/listen` of MCP 2026-07-28, or
//! `resources/subscribe` of the 2025 protocol most clients still speak): the server reads each
//! subscribed run every interval and sends `notifications/resources/updated` when its payload
//! changed. The API has no push, so this is the client's poll, done once for it on the server's
//! side of the connection. A run is left when nothing more will happen to it (delivered and
//! attested, or cancelled) or when it is not the caller's; when none is left the subscription ends
//! gracefully, which tells the client there is nothing more to wait for.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use crate::api::{Api, Request};
use crate::RUNS;

/// The API path of a run resource URI, if it is one.
pub fn run_path(uri: &str) -> Option<String> {
    let run = uri.strip_prefix(RUNS)?;
    tokenops::ids::parse_id("run", run, "run_id")
        .ok()
        .map(|run| format!("/runs/{run}"))
}

/// A run's payload says nothing more will happen to it.
fn settled(payload: &serde_json::Value) -> bool {
    matches!(
        payload["next_action"].as_str(),
        Some("ready_for_downstream_agent" | "none")
    )
}

/// Watches `uris` for the holder of `key` until each is settled or `notify` fails (the client
/// has gone or ended the subscription).
pub async fn runs<A, F, N>(
    api: &A,
    key: Option<&str>,
    uris: Vec<String>,
    every: Duration,
    notify: N,
) where
    A: Api,
    N: Fn(String) -> F,
    F: Future<Output = Result<(), String>>,
{
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut open = uris;
    while !open.is_empty() {
        let mut still = Vec::with_capacity(open.len());
        for uri in open {
            let Some(path) = run_path(&uri) else { continue };
            let reply = match api.send(&Request::get(path), key).await {
                Ok(r) => r,
                Err(e) => {
                    // Unreachable for now: keep watching; the client sees no false update.
                    tracing::warn!(error = %e, "API unreachable while watching a run");
                    still.push(uri);
                    continue;
                }
            };
            if reply.status != 200 {
                continue; // not the caller's run: nothing to watch, as the API shows nothing
            }
            let now = reply.body.to_string();
            let changed = seen.get(&uri).is_some_and(|before| *before != now);
            if changed {
                if let Err(e) = notify(uri.clone()).await {
                    tracing::debug!(error = %e, "run updates end: the client is gone");
                    return;
                }
            }
            if !settled(&reply.body) {
                still.push(uri.clone());
            }
            seen.insert(uri, now);
        }
        open = still;
        if !open.is_empty() {
            tokio::time::sleep(every).await;
        }
    }
}
