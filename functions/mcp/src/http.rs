//! The tools over streamable HTTP, as the MCP function and the local server serve them:
//! stateless (a fresh server per request, no session to keep between Lambda invocations) and
//! JSON answers (no stream to hold open). The key is each request's bearer token.

use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::api::Api;
use crate::TokenOpsMcp;

pub type Service<A> = StreamableHttpService<TokenOpsMcp<A>, NeverSessionManager>;

/// The HTTP API's routes to the MCP function (streamable HTTP: POST a message; GET and DELETE
/// answer as a stateless server does). Outside the API's route table: they carry the protocol.
pub const ROUTES: [(&str, &str); 3] = [("POST", "/mcp"), ("GET", "/mcp"), ("DELETE", "/mcp")];

/// `hosts`: the `Host` values to accept (rmcp refuses others: DNS rebinding). `run_updates`:
/// serve run subscriptions (a `subscriptions/listen` answer is a stream held open, which a
/// server whose responses are buffered, as the Lambda function's, cannot give).
pub fn service<A: Api>(api: A, hosts: Vec<String>, run_updates: bool) -> Service<A> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts(hosts);
    StreamableHttpService::new(
        move || {
            let server = TokenOpsMcp::new(api.clone(), None);
            Ok(match run_updates {
                true => server.with_run_updates(crate::RUN_UPDATE_EVERY),
                false => server,
            })
        },
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// The host of a URL (`https://api.example.com/x` → `api.example.com`).
pub fn host_of(url: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()?
        .host_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_the_public_url() {
        assert_eq!(
            host_of("https://abc.execute-api.us-east-1.amazonaws.com").as_deref(),
            Some("abc.execute-api.us-east-1.amazonaws.com")
        );
        assert_eq!(
            host_of("http://127.0.0.1:8790/").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(host_of("no-scheme"), None);
    }
}
