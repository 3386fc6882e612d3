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

include mk/probes.mk
include mk/release.mk
include mk/bench.mk
include mk/fuzz.mk
.PHONY: help build test unit interop interop-tdlib interop-mtcute haproxy interop-reference lint layering check run clean

help: ## show this list
	@echo "usage: make <target> [HOST=example.com] [PORT=3128] [SECRET=...] [CARGO=cargo]"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

build: ## release binary: target/release/mtpx
	$(CARGO) build --release --locked

test: unit interop interop-tdlib interop-mtcute haproxy probes ## cargo tests, Telethon, TDLib and mtcute interop, HAProxy, then the active-probe suite

unit: ## cargo test --locked --all-targets
	$(CARGO) test --locked --workspace --all-targets

interop: ## Telethon -> target/debug/mtpx -> fake DC (makes .venv on first use)
	$(CARGO) build --locked
	MTPX_BIN=$(DEBUG_BIN) PYTHON=$(PYTHON) bash tests/interop/run.sh

interop-tdlib: ## TDLib -> target/debug/mtpx -> fake DC, in a loopback-only netns (root, unshare, ip)
	$(CARGO) build --locked
	MTPX_BIN=$(DEBUG_BIN) PYTHON=$(PYTHON) bash tests/interop/tdlib.sh

interop-mtcute: ## mtcute (npm, pinned) -> target/debug/mtpx -> fake DC, in a loopback-only netns
	$(CARGO) build --locked
	MTPX_BIN=$(DEBUG_BIN) PYTHON=$(PYTHON) bash tests/interop/mtcute.sh

haproxy: ## a real HAProxy (send-proxy-v2) balancing two mtpx instances
	$(CARGO) build --locked
	bash tests/haproxy/run.sh

interop-reference: ## the interop harness against its pure-Python reference proxy
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

