# Tiers: `make run` (the reference loop), `make test` (every test), `make check` (fmt + clippy),
# `make bench` (throughput on the embedded default). All build what they need.
.PHONY: run serve test check bench

run:
	cargo run --bin tokenops -- reference-run

serve:
	cargo run --bin tokenops -- serve --port 8787

# The resume test drives the real `tokenops` binary, so build it before the tests.
test:
	cargo build --bin tokenops
	cargo test --workspace

check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	cargo run --release --bin tokenops -- bench --runs 200 --concurrency 16
