# mk/fuzz.mk - `make fuzz` (included from the Makefile).
#
# Runs every cargo-fuzz target in fuzz/ (its own crate, workspace and Cargo.lock, never part of
# mtpx's dependency tree) for FUZZ_SECONDS each with libFuzzer. Needs a nightly toolchain and
# cargo-fuzz (`rustup toolchain install nightly`, `cargo install cargo-fuzz --locked`); not
# part of `make test` or CI. Corpora grow in fuzz/corpus/<target> (seeded from tests/data by
# fuzz/seed.py), crashes land in fuzz/artifacts/<target>; both are ignored by git.
# FUZZ_TARGETS picks a subset, FUZZ_ARGS adds libFuzzer flags (e.g. FUZZ_ARGS="-jobs=2").

FUZZ_SECONDS   ?= 30
FUZZ_TOOLCHAIN ?= nightly
FUZZ_TARGETS   ?= $(patsubst fuzz/fuzz_targets/%.rs,%,$(sort $(wildcard fuzz/fuzz_targets/*.rs)))
FUZZ_ARGS      ?=

.PHONY: fuzz

fuzz: ## each fuzz target for FUZZ_SECONDS (30) s; needs nightly + cargo-fuzz
	$(PYTHON) fuzz/seed.py
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		echo "== fuzz $$t ($(FUZZ_SECONDS) s)"; \
		$(CARGO) +$(FUZZ_TOOLCHAIN) fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) $(FUZZ_ARGS) \
			|| exit 1; \
	done
