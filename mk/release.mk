# Release builds: static musl binaries, reproducible archives, size budget, dependency audit.
# Included by the main Makefile; also usable alone: make -f mk/release.mk static
#
# Reproducibility: the same commit gives byte-identical binaries and archives wherever it is
# checked out. Paths are remapped (--remap-path-prefix), Cargo.lock is used as is (--locked),
# both targets link with the rust-lld and musl crt objects shipped with the Rust toolchain (no
# host C toolchain involved), archives get a fixed mtime/owner/order and gzip -n.

CARGO      ?= cargo
PYTHON     ?= python3
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

STATIC_TARGETS ?= x86_64-unknown-linux-musl aarch64-unknown-linux-musl
SIZE_LIMIT     ?= 1048576
DIST_DIR       ?= dist
VERSION        := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
# Archive timestamps: the commit time (or 0 outside git), overridable as usual.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH

REL_CARGO_HOME := $(or $(CARGO_HOME),$(HOME)/.cargo)
REL_TARGET_ABS := $(abspath $(TARGET_DIR))
# Later remaps win, so the most specific prefixes come last.
REL_RUSTFLAGS  := --remap-path-prefix=$(REL_CARGO_HOME)=/cargo \
                  --remap-path-prefix=$(CURDIR)=/mtpx \
                  --remap-path-prefix=$(REL_TARGET_ABS)=/mtpx/target \
                  -C target-feature=+crt-static \
                  -C link-arg=--strip-all -C link-arg=--icf=all -C force-unwind-tables=no \
                  -C link-arg=-zpack-relative-relocs \
                  -C link-arg=-T$(CURDIR)/mk/no-unwind-tables.ld
# Size (issue 5, 1 MiB budget): -z pack-relative-relocs stores the x86_64 static-pie's relative
# relocations as DT_RELR (musl >= 1.2.4 applies them at start-up; 20 KiB less than .rela.dyn,
# ASLR kept; the aarch64 binary is not PIE and has none). mk/no-unwind-tables.ld drops the
# unwind tables that a panic = "abort", stripped binary never reads (71 KiB x86_64, 66 KiB aarch64).
# In this build src/sys.rs also stands in for libunwind and musl's pthread_setname_np (260 KiB
# x86_64, 222 KiB aarch64): see docs/SIZE.md.
# Neutralise environment that would make a build differ from the next one. (An empty but set
# CARGO_ENCODED_RUSTFLAGS would win over RUSTFLAGS, hence env -u.)
REL_ENV := env -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS \
           RUSTFLAGS='$(strip $(REL_RUSTFLAGS))' CARGO_INCREMENTAL=0 \
           CARGO_TARGET_DIR='$(TARGET_DIR)' \
           CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
           CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld

static_bin = $(TARGET_DIR)/$(1)/release/mtpx

.PHONY: static $(addprefix static-,$(STATIC_TARGETS)) size size-report dist audit repro static-smoke

static: $(addprefix static-,$(STATIC_TARGETS)) ## static musl binaries (x86_64, aarch64) in target/<triple>/release/
	@for t in $(STATIC_TARGETS); do echo "built $(TARGET_DIR)/$$t/release/mtpx"; done

$(addprefix static-,$(STATIC_TARGETS)): static-%:
	@rustup target list --installed 2>/dev/null | grep -qx '$*' || rustup target add '$*'
	$(REL_ENV) $(CARGO) build --release --locked --target $*

size: static ## sizes of the static release binaries (fails at 1 MiB or more)
	@fail=0; for t in $(STATIC_TARGETS); do \
		b=$(TARGET_DIR)/$$t/release/mtpx; n=$$(wc -c < $$b); \
		awk -v t=$$t -v n=$$n -v l=$(SIZE_LIMIT) 'BEGIN { printf "%-28s %8d bytes  %6.1f KiB  (%.1f%% of %d)\n", t, n, n / 1024, 100 * n / l, l }'; \
		if [ $$n -ge $(SIZE_LIMIT) ]; then echo "size: $$t is over the limit"; fail=1; fi; \
	done; exit $$fail

# Where the bytes go (docs/SIZE.md): the x86_64 static binary built with the same flags but
# symbols kept, in its own target dir; section sizes and the largest symbols.
SIZE_REPORT_DIR := $(TARGET_DIR)/size-report
size-report: ## the largest symbols of the x86_64 static binary (same build, symbols kept)
	$(subst --strip-all,--strip-debug,$(REL_ENV)) CARGO_TARGET_DIR='$(SIZE_REPORT_DIR)' \
		CARGO_PROFILE_RELEASE_STRIP=false $(CARGO) build --release --locked --target x86_64-unknown-linux-musl
	@b=$(SIZE_REPORT_DIR)/x86_64-unknown-linux-musl/release/mtpx; \
		echo "$$b: $$(wc -c < $$b) bytes with symbols; sections:"; \
		size -A $$b | awk '$$2 > 4096 && $$1 !~ /^\.debug|^\.comment|^\.symtab|^\.strtab/'; \
		nm -S --size-sort -C $$b | tail -n $${N:-40} | \
		while read -r addr sz kind name; do printf '%8d %s %s\n' 0x$$sz "$$kind" "$$name"; done

# dist/mtpx-<version>-<target>.tar.gz holds mtpx-<version>-<target>/{mtpx,README.md,LICENSE*,
# mtpx.service}; SHA256SUMS covers the archives.
dist: static ## dist/mtpx-<version>-<target>.tar.gz + dist/SHA256SUMS (reproducible)
	@rm -rf $(DIST_DIR) && mkdir -p $(DIST_DIR)
	@set -e; for t in $(STATIC_TARGETS); do \
		name=mtpx-$(VERSION)-$$t; stage=$(DIST_DIR)/.stage/$$name; \
		mkdir -p $$stage; \
		cp $(TARGET_DIR)/$$t/release/mtpx $$stage/mtpx; chmod 0755 $$stage/mtpx; \
		for f in README.md LICENSE LICENSE-MIT contrib/mtpx.service docs/INSTALL.md; do \
			if [ -f $$f ]; then cp $$f $$stage/; chmod 0644 $$stage/$$(basename $$f); fi; \
		done; \
		find $$stage -exec touch -h -d @$(SOURCE_DATE_EPOCH) {} +; \
		tar --sort=name --format=gnu --mtime=@$(SOURCE_DATE_EPOCH) \
			--owner=0 --group=0 --numeric-owner --mode='go-w' \
			-C $(DIST_DIR)/.stage -cf - $$name | gzip -9 -n > $(DIST_DIR)/$$name.tar.gz; \
	done; rm -rf $(DIST_DIR)/.stage
	@cd $(DIST_DIR) && sha256sum *.tar.gz > SHA256SUMS && cat SHA256SUMS

audit: ## crates in the binary's dependency tree, versions, licenses; fails on growth
	$(PYTHON) scripts/audit.py

repro: ## build the current commit twice in two fresh directories and compare the bytes
	bash scripts/repro-check.sh

static-smoke: ## end-to-end smoke test: x86_64 natively, aarch64 under qemu-aarch64
	bash scripts/static-smoke.sh
