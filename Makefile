# lstm-stack: `make run` (demo) and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install protos lint test run bench node-deps buf-deps clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The client distribution first: the services' one requires it, and it is not on PyPI.
	$(PY) -m pip install --quiet -e clients/python
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Regenerate protos/**/*_pb2*.py(i) and docs/API.md from the .proto files.
protos: $(STAMP)
	$(PY) scripts/gen_protos.py
	$(PY) scripts/api_overview.py

lint: $(STAMP) buf-deps
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m mypy
	bash scripts/check_protos.sh

## Node client packages (clients/node) for tests/clients/test_node_*.py; Node.js from Debian if missing.
NODE_STAMP := clients/node/node_modules/.installed-stamp
# npm ci runs the package's prepare script: the .proto copy and the generated types follow protos/.
$(NODE_STAMP): clients/node/package.json clients/node/package-lock.json clients/node/scripts/prepare.js $(wildcard protos/lstm_stack/v1/*.proto)
	command -v node >/dev/null && command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	cd clients/node && npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

node-deps: $(NODE_STAMP)

## buf (the pinned @bufbuild/buf from npm, in tools/node_modules) for scripts/check_protos.sh and tests/protos.
BUF_STAMP := tools/node_modules/.installed-stamp
$(BUF_STAMP): tools/package.json tools/package-lock.json
	command -v node >/dev/null && command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	cd tools && npm ci --no-audit --no-fund
	touch $(BUF_STAMP)

buf-deps: $(BUF_STAMP)

test: $(STAMP) node-deps lint
	$(PY) -m pytest

run: $(STAMP)
	$(PY) -m demo

## Every bench (bench/run_all.py; bench_serving.py installs h2load and makes bench/.mlserver-venv itself).
## `make bench BENCH_ARGS=--quick`: each script's short form; `BENCH_ARGS=bench_serving.py`: one script.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache tools/node_modules
