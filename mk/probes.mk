# Active-probing suite (tests/probes/): every probe goes once to a real website (nginx on
# 127.0.0.1, self-signed certificate for mtpx.test) and once to target/debug/mtpx fronting to
# it; the answers must be the same (bytes, certificate, record sequence, close behaviour).
# Needs nginx, openssl and curl (scripts/test-deps.sh installs them). Loopback only.
# Included from the top-level Makefile, which defines CARGO, PYTHON, DEBUG_BIN, DEPS and the
# suite_begin/suite_end markers.
PROBES_TIMEOUT ?= 180

.PHONY: probes
probes: $(DEPS) ## active probes: nginx vs mtpx fronting to it (needs nginx, openssl, curl)
	$(suite_begin)
	$(CARGO) build --locked
	timeout -k 10 $(PROBES_TIMEOUT) $(PYTHON) tests/probes/probes.py --mtpx $(DEBUG_BIN)
	$(suite_end)
