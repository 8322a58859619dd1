# Tiers: `make run` (the reference loop), `make test` (every test), `make check` (fmt + clippy),
# `make bench` (throughput on the embedded default). All build what they need.
.PHONY: run serve test check bench

run:
	cargo run --bin tokenops -- reference-run

serve:
	cargo run --bin tokenops -- serve --port 8787

# Every test: builds all binaries, installs moto into .venv, starts moto + `tokenops emulator`,
# runs `cargo test --workspace` against them (scripts/test-all), and stops them.
test:
	scripts/test-all

check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	cargo run --release --bin tokenops -- bench --runs 200 --concurrency 16
