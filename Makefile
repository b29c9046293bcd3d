# Everything a fresh machine needs is installed by these targets themselves.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo up test test-fast faults bench bench-sweep soak lint system-deps browser-deps clean

# python-ldap builds against OpenLDAP's headers: system-deps first.
$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# From the OS packages: OpenLDAP's slapd (the directory worker's real store), the headers
# python-ldap builds against (the worker's client is OpenLDAP's libldap) and, for tests,
# Chromium (the report and dashboard are checked in a real browser).
system-deps:
	@{ command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ]; } && [ -f /usr/include/ldap.h ] \
	  && [ -f /usr/include/sasl/sasl.h ] && command -v gcc >/dev/null 2>&1 \
	  && [ -f "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || { \
	  echo "installing slapd, ldap-utils, OpenLDAP's headers and a C compiler from Debian packages"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq slapd ldap-utils \
	    libldap-dev libsasl2-dev gcc python3-dev >/dev/null; }

browser-deps:
	@[ -x /usr/bin/chromium ] || { \
	  echo "installing chromium from Debian packages"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }


demo: $(STAMP) system-deps
	$(BIN)/lethe demo

up: $(STAMP) system-deps
	$(BIN)/lethe up

test: $(STAMP) system-deps browser-deps lint
	$(BIN)/pytest -q -p no:cacheprovider

# The fault suite at the issue's sizes: hundreds of requests, 30 s broker pause, 60 s without
# slapd, 1,000 poison messages. `make test` (and CI) runs the same scenarios, shorter.
faults: $(STAMP) system-deps
	LETHE_FAULTS_SCALE=full $(BIN)/pytest -q -p no:cacheprovider tests/faults

# Throughput and latency against the limit of the stores themselves (see README, Performance).
bench: $(STAMP) system-deps
	$(BIN)/python -m bench.run --requests $${REQUESTS:-1000} --rate $${RATE:-100} $${PROFILE:+--profile} $${HOLDS:+--holds $$HOLDS}

# Latency against offered load: the highest rate whose p99 stays within 2 s.
bench-sweep: $(STAMP) system-deps
	$(BIN)/python -m bench.sweep --rates $${RATES:-5,10,15,20,25} --seconds $${SECONDS_PER_RATE:-20}

soak: $(STAMP) system-deps
	$(BIN)/python -m bench.run --soak-minutes $${MINUTES:-10} --rate $${RATE:-10}

test-fast: $(STAMP)


	$(BIN)/pytest -q -p no:cacheprovider tests/unit

lint: $(STAMP)
	$(BIN)/ruff check shared services cli tests deploy bench
	$(BIN)/mypy

clean:
	rm -rf .lethe test-output
