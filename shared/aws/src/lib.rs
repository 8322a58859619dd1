//! TokenOps on AWS: the adapters of the common crate's ports to the AWS services, and the Lambda
//! edge every function's `main.rs` wires with. Nothing here decides anything: the rules live in
//! `tokenops` (shared/core).
//!
//! - [`dynamodb`]: the one [`tokenops::store::Store`] adapter (DynamoDB in AWS and emulators, the
//!   embedded engine locally);
//! - [`sqs`]: the run queue on Amazon SQS;
//! - [`sfn`]: the run's orchestrator, one Step Functions execution per run;
//! - [`kms`]: the attestation signer with a non-exportable Ed25519 KMS key;
//! - [`lambda`]: configuration from the environment, API Gateway events, task diagnostics.
//!
//! A function links what it calls: the linker drops the clients it never builds (the quote
//! function carries no SQS, Step Functions or KMS code).

pub mod dynamodb;
pub mod kms;
pub mod lambda;
pub mod sfn;
pub mod sqs;

pub use dynamodb::{local_client, DynamoStore, TABLE_ATTRIBUTES};
pub use kms::KmsSigner;
pub use sfn::StepFunctions;
pub use sqs::SqsQueue;
