//! The local runtime: every stage function linked into one process over the embedded DynamoDB
//! engine, the table-backed run queue and the ASL orchestrator; plus the scripted agent used by
//! `reference-run`, `bench` and the tests.

pub mod agent;
pub mod asl;
pub mod bench;
pub mod emulator;
pub mod mcp;
pub mod orchestrator;
pub mod paid_run;
pub mod reference;
pub mod runtime;
pub mod server;
pub mod store_gate;
pub mod verify;
