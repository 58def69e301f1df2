# One entry point for the habits of this repo; each target is what the README documents.
.PHONY: serve test bench fmt lint

serve: ## set up the machine, build, start the server
	./scripts/serve

test: ## set up the machine, fmt + clippy + the whole test suite
	./scripts/test

bench: ## release build + benchmarks beside bubblewrap and fork/exec
	./scripts/bench

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings
