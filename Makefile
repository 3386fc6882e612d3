# mtpx - see `make help`.  Everything here stays on 127.0.0.1 except `make run`'s proxy itself
# once a real Telegram client connects to it.

CARGO      ?= cargo
PYTHON     ?= python3
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
RELEASE    := $(TARGET_DIR)/release/mtpx
DEBUG_BIN  := $(TARGET_DIR)/debug/mtpx
HOST       ?= localhost
PORT       ?= 3128
RUN_CONFIG := $(TARGET_DIR)/mtpx-run.toml

.DEFAULT_GOAL := help

# `make test`: scripts/test-deps.sh (installs what the suites need, or stops at once with the
# command to run as root), then each suite, then a summary of what passed, failed or did not run.
# Each suite records its result in $(TEST_RESULTS) ($(suite_begin) first, $(suite_end) last).
# A suite target run alone (`make haproxy`) runs test-deps first too; inside `make test`,
# which already ran it, MTPX_DEPS_DONE=1 leaves it out.
TEST_SUITES  := unit interop interop-tdlib interop-mtcute haproxy probes
TEST_RESULTS := $(TARGET_DIR)/test-results
DEPS         := $(if $(MTPX_DEPS_DONE),,test-deps)
suite_begin   = @mkdir -p $(TEST_RESULTS) && rm -f $(TEST_RESULTS)/$@.end && date +%s > $(TEST_RESULTS)/$@.begin
suite_end     = @date +%s > $(TEST_RESULTS)/$@.end

include mk/probes.mk
include mk/release.mk
include mk/bench.mk
include mk/fuzz.mk
include mk/soak.mk
.PHONY: help build test test-deps unit interop interop-tdlib interop-mtcute haproxy interop-reference lint layering check run clean

help: ## show this list
	@echo "usage: make <target> [HOST=example.com] [PORT=3128] [SECRET=...] [CARGO=cargo]"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

build: ## release binary: target/release/mtpx
	$(CARGO) build --release --locked

test: ## installs what the suites need (scripts/test-deps.sh), runs them all, prints a summary
	@PYTHON=$(PYTHON) bash scripts/test-deps.sh
	@rm -rf $(TEST_RESULTS)
	@$(MAKE) --no-print-directory $(TEST_SUITES) MTPX_DEPS_DONE=1; rc=$$?; \
		bash scripts/test-summary.sh $(TEST_RESULTS) $(TEST_SUITES); exit $$rc

test-deps: ## check, and install what is missing: nginx, haproxy, .venv, Node.js, mtcute (see the script)
	@PYTHON=$(PYTHON) bash scripts/test-deps.sh

unit: $(DEPS) ## cargo test --locked --all-targets
	$(suite_begin)
	$(CARGO) test --locked --workspace --all-targets
	$(suite_end)

interop: $(DEPS) ## Telethon -> target/debug/mtpx -> fake DC
	$(suite_begin)
	$(CARGO) build --locked
	MTPX_BIN=$(DEBUG_BIN) PYTHON=$(PYTHON) bash tests/interop/run.sh
	$(suite_end)

interop-tdlib: $(DEPS) ## TDLib -> target/debug/mtpx -> fake DC, in a loopback-only netns (unshare, ip)
	$(suite_begin)
	$(CARGO) build --locked
	MTPX_BIN=$(DEBUG_BIN) PYTHON=$(PYTHON) bash tests/interop/tdlib.sh
	$(suite_end)

interop-mtcute: $(DEPS) ## mtcute (npm, pinned) -> target/debug/mtpx -> fake DC, in a loopback-only netns
	$(suite_begin)
	$(CARGO) build --locked
	MTPX_BIN=$(DEBUG_BIN) PYTHON=$(PYTHON) bash tests/interop/mtcute.sh
	$(suite_end)

haproxy: $(DEPS) ## a real HAProxy (send-proxy-v2) balancing two mtpx instances
	$(suite_begin)
	$(CARGO) build --locked
	PYTHON=$(PYTHON) bash tests/haproxy/run.sh
	$(suite_end)

interop-reference: $(DEPS) ## the interop harness against its pure-Python reference proxy
	PYTHON=$(PYTHON) bash tests/interop/run.sh --reference

lint: ## rustfmt check + clippy with warnings denied (mtpx and the bench tool)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) fmt --manifest-path tools/bench/Cargo.toml -- --check
	$(CARGO) clippy --locked --manifest-path tools/bench/Cargo.toml --target-dir $(BENCH_TARGET) -- -D warnings

# Comments are ignored (text after //), so module docs may say what a layer must not do.
layering: ## src/proto and src/formats stay pure; `unsafe` only in src/sys.rs
	@bad=$$(grep -rnE '\bmio\b|Instant::now|SystemTime::now|getrandom|TcpStream|UdpSocket|std::thread' src/proto src/formats \
		| sed -E 's#//.*$$##' | grep -E '\bmio\b|Instant::now|SystemTime::now|getrandom|TcpStream|UdpSocket|std::thread' \
		|| true); \
	if [ -n "$$bad" ]; then \
		echo "layering: src/proto and src/formats must not use mio, the clock, getrandom, sockets or threads:"; \
		echo "$$bad"; exit 1; fi
	@bad=$$(grep -rnw --include='*.rs' unsafe src | grep -v '^src/sys\.rs:' \
		| sed -E 's#//.*$$##' | grep -w unsafe || true); \
	if [ -n "$$bad" ]; then \
		echo "layering: \`unsafe\` is only allowed in src/sys.rs:"; echo "$$bad"; exit 1; fi
	@echo "layering: ok"

check: lint layering ## lint + layering rules

# `make run`: fresh ee secret for HOST (default localhost, i.e. nothing real to front for) unless
# SECRET is given, config in $(RUN_CONFIG) on 127.0.0.1:$(PORT), links, then the proxy itself.
run: build ## start a local proxy on 127.0.0.1:PORT (3128) and print its links
	@mkdir -p $(TARGET_DIR)
	@secret='$(SECRET)'; \
	if [ -z "$$secret" ]; then secret=$$($(RELEASE) generate-secret $(HOST)) || exit 1; fi; \
	printf '# written by `make run`\nsecret = "%s"\nbind-to = "127.0.0.1:%s"\n' \
		"$$secret" '$(PORT)' > $(RUN_CONFIG)
	@echo "config: $(RUN_CONFIG)"
	$(RELEASE) access $(RUN_CONFIG) --ipv4 127.0.0.1
	exec $(RELEASE) run $(RUN_CONFIG)

clean: ## cargo clean and Python caches (keeps .venv)
	$(CARGO) clean
	rm -rf tests/interop/__pycache__

