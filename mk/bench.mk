# mk/bench.mk - `make bench` / `make bench-quick` (included from the Makefile).
#
# Builds the release binary and the separate bench crate (tools/bench, its own workspace and
# Cargo.lock, never part of mtpx's dependency tree), then runs the loopback benchmark:
# throughput, handshakes, idle memory, CPU per GB against the AES-CTR floor, RSS over rounds.
# Everything stays on 127.0.0.0/8; the tool stops by itself (full < 10 min, quick < 1 min).
# Figures: stdout table + $(TARGET_DIR)/bench.json. BENCH_ARGS passes extra flags
# (e.g. BENCH_ARGS="--workers 1").

BENCH_TARGET ?= tools/bench/target
BENCH_BIN    := $(BENCH_TARGET)/release/mtpx-bench
BENCH_ARGS   ?=

.PHONY: bench bench-quick bench-build

bench-build:
	$(CARGO) build --release --locked
	$(CARGO) build --release --locked --manifest-path tools/bench/Cargo.toml --target-dir $(BENCH_TARGET)

bench: bench-build ## loopback benchmark, full (< 10 min): table + target/bench.json
	$(BENCH_BIN) --mtpx $(RELEASE) --json $(TARGET_DIR)/bench.json $(BENCH_ARGS)

bench-quick: bench-build ## loopback benchmark, small counts (< 1 min)
	$(BENCH_BIN) --quick --mtpx $(RELEASE) --json $(TARGET_DIR)/bench.json $(BENCH_ARGS)
