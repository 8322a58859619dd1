//! `tokenops mcp`: the MCP tools ([`mcp::TokenOpsMcp`]) over stdio, calling the API over HTTP.
//! The local server serves them over streamable HTTP at `/mcp` ([`crate::server`]).

use rmcp::ServiceExt;

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("MCP session: {0}")]
    Session(String),
}

/// Serves one MCP session on stdin/stdout until the client closes it.
pub async fn serve_stdio(api: &str, key: Option<String>) -> Result<(), McpError> {
    let server = mcp::TokenOpsMcp::new(mcp::api::HttpApi::new(api)?, key)
        .with_run_updates(mcp::RUN_UPDATE_EVERY);
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| McpError::Session(e.to_string()))?;
    running
        .waiting()
        .await
        .map_err(|e| McpError::Session(e.to_string()))?;
    Ok(())
}
