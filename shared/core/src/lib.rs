//! TokenOps common model crate (shared/core): every function and the local runtime build on it.
//! It holds no AWS SDK: the AWS adapters of its ports and the Lambda edge are `tokenops_aws`
//! (shared/aws).
//!
//! - [`model`]: the loop objects (serde + JSON Schema) and the full loop payload;
//! - [`run_state`]: the run's checked state machine;
//! - [`evidence`]: the deterministic evidence review (stage 8);
//! - [`money`]: double-entry transfers and their conditional writes;
//! - [`proof`]: RFC 8785 digests, the hash-chained ledger, DSSE/in-toto, Standard Webhooks;
//! - [`store`], [`ports`], [`queue`], [`provider`]: the ports, the store-backed queue and the
//!   HTTP-client adapters (callbacks, the test provider);
//! - [`x402`]: HTTP 402 payments (x402 v2) — wire types, facilitator and chain ports, money rules;
//! - [`http`], [`api`]: the HTTP edge shared by API-facing functions;
//! - [`manifest`], [`openapi`]: discovery — the manifest and the OpenAPI document;
//! - [`error`]: one error type per layer.

pub mod api;
pub mod backoff;
pub mod callback;
pub mod config;
pub mod error;
pub mod evidence;
pub mod http;
pub mod ids;
pub mod manifest;
pub mod model;
pub mod money;
pub mod openapi;
pub mod ports;
pub mod proof;
pub mod provider;
pub mod queue;
pub mod rules;
pub mod run_state;
pub mod stage;
pub mod store;
pub mod x402;
