# mk/soak.mk - `make soak`, `make soak-quick`, `make soak-compare` (included from the Makefile).
#
# The hostile soak (issue 12; tools/bench/src/soak.rs): valid clients echo through mtpx while
# attackers run (slowloris, empty-record floods, fronted and client slow readers, garbage,
# replays, a connection flood from one address past `concurrency`) and probes check that mtpx
# answers as the stand-in site does. Minutes, not part of `make test`. Everything stays on
# 127.0.0.0/8. Prints a markdown table (also in $(TARGET_DIR)/soak/soak.md); SOAK_ARGS passes
# options (`$(BENCH_BIN) soak --help`), e.g. SOAK_ARGS="--duration 60 --attacks flood".

SOAK_ARGS ?=
# soak-compare: the binary built from this commit runs first, as "before".
SOAK_BASE ?= 496898c
SOAK_DIR  := $(TARGET_DIR)/soak

.PHONY: soak soak-quick soak-compare

soak: bench-build ## hostile soak, each attack alone then all at once (~4 min): markdown table
	$(BENCH_BIN) soak --mtpx $(RELEASE) --out $(SOAK_DIR)/soak.md $(SOAK_ARGS)

soak-quick: bench-build ## hostile soak, all attacks at once only (~45 s)
	$(BENCH_BIN) soak --quick --mtpx $(RELEASE) --out $(SOAK_DIR)/soak.md $(SOAK_ARGS)

soak-compare: bench-build ## the soak on SOAK_BASE (a commit, built apart) and on this tree, side by side (~8 min)
	rm -rf $(SOAK_DIR)/base && mkdir -p $(SOAK_DIR)/base
	git archive $(SOAK_BASE) | tar -x -C $(SOAK_DIR)/base
	$(CARGO) build --release --locked --manifest-path $(SOAK_DIR)/base/Cargo.toml \
		--target-dir $(SOAK_DIR)/base-target
	$(BENCH_BIN) soak --compare $(SOAK_DIR)/base-target/release/mtpx --mtpx $(RELEASE) \
		--labels "before ($(SOAK_BASE)),after ($$(git rev-parse --short HEAD))" \
		--out $(SOAK_DIR)/soak.md $(SOAK_ARGS)
