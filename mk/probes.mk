# Active-probing suite (tests/probes/): every probe goes once to a real website (nginx on
# 127.0.0.1, self-signed certificate for mtpx.test) and once to target/debug/mtpx fronting to
# it; the answers must be the same (bytes, certificate, record sequence, close behaviour).
# Needs nginx, openssl and curl (Debian: apt-get install nginx openssl curl). Loopback only.
# A third site speaks X25519MLKEM768: Node.js 24 from PyPI (tests/pq/setup.sh, via PQ_TOOLS).
# Included from the top-level Makefile, which defines CARGO, PYTHON and DEBUG_BIN.
PROBES_TIMEOUT ?= 180

.PHONY: probes
probes: ## active probes: nginx vs mtpx fronting to it (needs nginx, openssl, curl)
	$(CARGO) build --locked
	$(PQ_TOOLS) && timeout -k 10 $(PROBES_TIMEOUT) $(PYTHON) tests/probes/probes.py --mtpx $(DEBUG_BIN)
