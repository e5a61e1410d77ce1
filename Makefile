# The two set-up commands: `make demo` (end-to-end demo) and `make test` (the test suite).
# Each creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# tritonclient[grpc] pins protobuf < 7, ours is >= 7: the test that calls the ranker with NVIDIA's client runs
# it from its own venv, as a backend built for Triton runs in its own process.
CLIENT_VENV := .venv-tritonclient
CLIENT_STAMP := $(CLIENT_VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint proto clean browser promtool

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(CLIENT_STAMP):
	$(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/python -m pip install --quiet "tritonclient[grpc]==2.73.0"
	touch $(CLIENT_STAMP)

demo: $(STAMP)
	$(PY) -m deploy.demo $(DEMO_ARGS)

test: $(STAMP) $(CLIENT_STAMP) browser promtool
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

# The dashboard test drives Debian's headless chromium through selenium.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian chromium + chromium-driver for the dashboard browser test"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; }

# The alert rule tests run promtool, taken from Debian's prometheus package: only that binary, as installing
# the package enables and starts a Prometheus service (on compose's port 9090) and pulls in its web UI.
promtool:
	@command -v promtool >/dev/null || { \
	  echo "installing promtool from Debian's prometheus package for the alert rule tests"; \
	  tmp=$$(mktemp -d) && cd $$tmp && $(SUDO) apt-get update -qq && apt-get download -qq prometheus \
	  && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool \
	  && $(SUDO) install -m 755 usr/bin/promtool /usr/local/bin/promtool; rc=$$?; rm -rf $$tmp; exit $$rc; }

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

proto: $(STAMP)
	$(PY) -m proto.codegen

clean:
	rm -rf $(VENV) $(CLIENT_VENV) .data
