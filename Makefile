# Tiers: `make run` (the reference loop), `make run-x402` (the same loop paid over HTTP 402 with
# a local chain and the official x402 SDK), `make test` (every test), `make check` (fmt + clippy),
# `make infra` (the SAM template's offline checks + `sam build`; part of `make test`),
# `make bench` (throughput on the embedded default). All build and install what they need.
.PHONY: run run-x402 serve test check infra bench

run:
	cargo run --bin tokenops -- reference-run

run-x402:
	scripts/run-x402

serve:
	cargo run --bin tokenops -- serve --port 8787

# Every test: builds all binaries, installs the Python tools into .venv, starts moto +
# `tokenops emulator`, runs `cargo test --workspace` against them, stops them, then runs
# scripts/schemathesis (the OpenAPI document against `tokenops serve`) and scripts/check-infra
# (scripts/test-all).
test:
	scripts/test-all

infra:
	scripts/check-infra

check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	cargo run --profile perf --bin tokenops -- bench --runs 200 --concurrency 1,4,16,32,64
