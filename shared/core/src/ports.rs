//! The narrow capabilities handlers are generic over. Storage is [`crate::store::Store`]; the rest
//! are here. Each has one adapter per plane: local (embedded) and AWS.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::model::RunMessage;

/// A received message; `receipt` identifies this delivery (a redelivery gets a new one).
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub message_id: String,
    pub receipt: String,
    pub body: RunMessage,
    pub receive_count: i64,
    pub sent_at: i64,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
pub struct QueueStats {
    pub queue: String,
    pub depth: i64,
    pub in_flight: i64,
    pub oldest_age_seconds: i64,
    pub dead_letter_depth: i64,
    pub max_receives: i64,
    pub visibility_timeout_seconds: i64,
}

/// The run queue: at-least-once delivery with a visibility timeout and a dead-letter queue.
pub trait RunQueue: Send + Sync + Clone + 'static {
    fn send(&self, msg: &RunMessage) -> impl Future<Output = Result<String, StoreError>> + Send;
    fn receive(&self, max: usize)
        -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send;
    fn ack(&self, d: &Delivery) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn stats(&self) -> impl Future<Output = Result<QueueStats, StoreError>> + Send;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Started {
    /// The engine took the execution and sees it to its end (the local engine: its own failure
    /// path runs the failure handler).
    New,
    /// An execution with that name exists: the start was a duplicate.
    AlreadyExists,
    /// The execution ran to its end before `start` returned (Step Functions Express, started
    /// synchronously): the caller acts on how it ended.
    Ended(Ended),
}

/// How a synchronously run execution ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Succeeded,
    /// Failed, timed out or aborted: `error` is the error type (`States.Timeout` for a timeout).
    Failed {
        error: String,
        cause: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redriven {
    /// The failed execution resumes from the state that failed.
    Yes,
    /// The execution is not failed (running, or redriven already): nothing to do.
    NotFailed,
    /// No execution by that name.
    NotFound,
    /// The engine cannot resume an execution (Step Functions Express): start the path again.
    /// Sound because every stage is idempotent: one that already succeeded answers its object
    /// without a second effect.
    StartAgain,
}

/// Starts the orchestrated path (Step Functions in AWS, the local ASL engine here).
pub trait Orchestrator: Send + Sync + Clone + 'static {
    fn start(
        &self,
        name: &str,
        input: serde_json::Value,
    ) -> impl Future<Output = Result<Started, StoreError>> + Send;
    /// Resumes a failed execution from the state that failed, keeping what succeeded (the
    /// local engine), or says to start it again ([`Redriven::StartAgain`]).
    fn redrive(&self, name: &str) -> impl Future<Output = Result<Redriven, StoreError>> + Send;
}

/// Outbound HTTP for callbacks: returns the status code or a transport error. `pinned` are the
/// addresses the callback policy checked for the URL's host ([`crate::rules::resolve_allowed`]):
/// the sender connects to one of them and never resolves the host itself (DNS rebinding).
pub trait CallbackSender: Send + Sync + Clone + 'static {
    fn post(
        &self,
        url: &str,
        pinned: &[SocketAddr],
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<u16, String>> + Send;
}

/// A settlement provider's side of the money path: told about a new payment request, it later
/// calls the confirmation webhook (signed with its secret).
pub trait SettlementProvider: Send + Sync + Clone + 'static {
    fn request_payment(
        &self,
        route: &crate::model::ProviderRoute,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// HTTP sender over reqwest (rustls); used by both planes.
///
/// Pinning: each call builds a client whose only DNS resolver is a [`PinnedResolver`] answering
/// the URL's host with the checked addresses and refusing every other name, so nothing is looked
/// up after the check, while TLS SNI and `Host` still come from the URL. Why a client per call: a
/// client's resolver is fixed when it is built, so a shared client could only learn a per-request
/// pin through shared mutable state that concurrent deliveries to the same host would race on;
/// and `ClientBuilder::resolve_to_addrs` alone falls back to system DNS for any name it does not
/// match. The cost (a TLS config per call, no pooled connection) is small next to a callback's
/// rate: one per run, plus retries.
#[derive(Clone)]
pub struct HttpSender {
    timeout: Duration,
}

impl HttpSender {
    /// Fails if the HTTP client cannot be built (e.g. no TLS backend), so startup fails loudly
    /// instead of falling back to a default client, which would follow redirects.
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let sender = HttpSender { timeout };
        sender.client(PinnedResolver::default())?;
        Ok(sender)
    }

    fn client(&self, resolver: PinnedResolver) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .timeout(self.timeout)
            // Redirects could bounce a callback to an address the URL check refused.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the host itself, after our check.
            .no_proxy()
            .dns_resolver(resolver)
            .build()
    }
}

impl CallbackSender for HttpSender {
    async fn post(
        &self,
        url: &str,
        pinned: &[SocketAddr],
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<u16, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        let host = match parsed.host() {
            // An IP literal is connected to directly (no resolver): it must be the pinned address.
            Some(url::Host::Ipv4(ip)) if pinned.iter().any(|a| a.ip() == ip) => None,
            Some(url::Host::Ipv6(ip)) if pinned.iter().any(|a| a.ip() == ip) => None,
            Some(url::Host::Domain(name)) if !pinned.is_empty() => Some(name.to_string()),
            _ => return Err(format!("{url}: not among the checked addresses")),
        };
        let client = self
            .client(PinnedResolver {
                host,
                addrs: pinned.to_vec(),
            })
            .map_err(|e| e.to_string())?;
        let mut req = client.post(parsed).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    }
}

/// The sender's only DNS: the one pinned host name → its checked addresses; any other name fails.
#[derive(Clone, Debug, Default)]
struct PinnedResolver {
    host: Option<String>,
    addrs: Vec<SocketAddr>,
}

impl reqwest::dns::Resolve for PinnedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let asked = name.as_str().trim_end_matches('.');
        let answer: Result<reqwest::dns::Addrs, Box<dyn std::error::Error + Send + Sync>> =
            match &self.host {
                Some(h) if h.trim_end_matches('.').eq_ignore_ascii_case(asked) => {
                    Ok(Box::new(self.addrs.clone().into_iter()))
                }
                _ => Err(format!("{asked} is not the pinned callback host").into()),
            };
        Box::pin(std::future::ready(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::dns::Resolve;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback HTTP server for one request: answers 204 and hands back the request head.
    async fn one_request() -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let head = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let (mut buf, mut n) = (vec![0u8; 16 * 1024], 0);
            while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                let k = s.read(&mut buf[n..]).await.unwrap();
                assert!(k > 0, "connection closed before the request head");
                n += k;
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
        });
        (addr, head)
    }

    #[tokio::test]
    async fn connects_to_the_pinned_address_and_never_resolves_the_host() {
        // `.invalid` never resolves (RFC 6761): reaching the listener proves no lookup happened.
        let (addr, head) = one_request().await;
        let sender = HttpSender::new(Duration::from_secs(5)).unwrap();
        let url = format!("http://callback.tokenops.invalid:{}/cb", addr.port());
        let code = sender.post(&url, &[addr], vec![], b"{}".to_vec()).await;
        assert_eq!(code, Ok(204));
        let head = head.await.unwrap();
        assert!(head.starts_with("post /cb http/1.1\r\n"), "{head}");
        let host = format!("\r\nhost: callback.tokenops.invalid:{}\r\n", addr.port());
        assert!(head.contains(&host), "Host keeps the URL's name: {head}");
    }

    #[tokio::test]
    async fn refuses_a_url_outside_the_pin() {
        let (addr, _head) = one_request().await;
        let sender = HttpSender::new(Duration::from_secs(5)).unwrap();
        let by_name = format!("http://callback.tokenops.invalid:{}/cb", addr.port());
        let literal = format!("http://127.0.0.1:{}/cb", addr.port());
        let elsewhere: SocketAddr = "127.0.0.2:9".parse().unwrap();
        for (url, pinned) in [
            (&by_name, &[][..]),
            (&literal, &[][..]),
            (&literal, &[elsewhere][..]),
        ] {
            let e = sender.post(url, pinned, vec![], vec![]).await.unwrap_err();
            assert!(e.contains("not among the checked addresses"), "{url}: {e}");
        }
    }

    #[tokio::test]
    async fn the_resolver_answers_only_the_pinned_name() {
        let addr: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let r = PinnedResolver {
            host: Some("cb.example.com".into()),
            addrs: vec![addr],
        };
        let got: Vec<_> = r
            .resolve("CB.example.com".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(got, vec![addr]);
        assert!(r
            .resolve("other.example.com".parse().unwrap())
            .await
            .is_err());
        let none = PinnedResolver::default();
        assert!(none
            .resolve("cb.example.com".parse().unwrap())
            .await
            .is_err());
    }
}
