# Tiers: `make run` (the reference loop), `make run-x402` (the same loop paid over HTTP 402 with
# a local chain and the official x402 SDK), `make test` (every test), `make check` (fmt + clippy),
# `make infra` (the SAM template's offline checks + `sam build`; part of `make test`),
# `make bench` (throughput on the embedded default), `make clients` (typed Python and TypeScript
# clients generated from the OpenAPI document, each driving a run; part of `make test`). All build
# and install what they need.
.PHONY: run run-x402 serve test check infra bench clients

run:
	cargo run --bin tokenops -- reference-run

run-x402:
	scripts/run-x402

serve:
	cargo run --bin tokenops -- serve --port 8787

# Every test: builds all binaries, installs the Python tools into .venv, starts moto +
# `tokenops emulator`, runs `cargo test --workspace` against them, stops them, then runs
# scripts/mcp-inspector, scripts/schemathesis and scripts/clients; scripts/check-infra runs
# beside all of it at nice 19 (scripts/test-all).
test:
	scripts/test-all

infra:
	scripts/check-infra

# The OpenAPI document validated (openapi-spec-validator, redocly lint), the Python and
# TypeScript clients generated from it into local/clients/generated/, and a whole run driven with
# each against `tokenops serve` (scripts/clients; part of `make test`).
clients:
	cargo build --bin tokenops
	scripts/clients

check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	cargo run --profile perf --bin tokenops -- bench --runs 200 --concurrency 1,4,16,32,64
