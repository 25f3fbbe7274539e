# fractal-grpc: every entry point. `make run` and `make test` are the two that matter.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := .tools/node_modules/.bin/buf
PROTO_FILES := $(shell find protos/fractal -name '*.proto')
# Third-party protos our protos import (buf.validate rules), vendored with their licence.
VENDORED_PROTOS := protos/third_party/protovalidate
GEN_DIR := libs
STAMP := $(VENV)/.installed

.PHONY: run test lint protos install bench clean test-unit test-service test-e2e

## run: the whole suite on embedded PostgreSQL and NATS (or FRACTAL_DATABASE_URL / FRACTAL_NATS_URL).
run: $(STAMP)
	$(VENV)/bin/fractal-dev run

## test: install what the tests need, lint, and run every test.
test: $(STAMP) lint
	$(PY) -m pytest

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Third-party packages first (grpcio-tools is needed to generate the stubs), then the stubs,
# then our packages in editable mode (the stub package must exist when libs is installed).
$(STAMP): $(VENV)/bin/python requirements-dev.txt libs/pyproject.toml services/*/pyproject.toml $(PROTO_FILES) $(VENDORED_PROTOS)/buf/validate/validate.proto
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(MAKE) protos
	$(PY) -m pip install --quiet -e libs -e services/api -e services/runner
	touch $(STAMP)

## protos: generate Python, gRPC and typed (.pyi) stubs into libs/fractal/ (not committed).
# buf/validate/validate.proto is generated too (libs/buf/, not committed): our stubs import it.
protos: $(VENV)/bin/python
	rm -rf $(GEN_DIR)/fractal $(GEN_DIR)/buf
	$(PY) -m grpc_tools.protoc -I $(VENDORED_PROTOS) --python_out=$(GEN_DIR) --mypy_out=$(GEN_DIR) \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy buf/validate/validate.proto
	$(PY) -m grpc_tools.protoc -I protos -I $(VENDORED_PROTOS) \
		--python_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) \
		--mypy_out=$(GEN_DIR) --mypy_grpc_out=$(GEN_DIR) \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		$(PROTO_FILES)
	find $(GEN_DIR)/fractal $(GEN_DIR)/buf -type d -exec touch {}/__init__.py \;

$(BUF):
	npm install --prefix .tools --no-save --silent @bufbuild/buf

## lint: buf lint (STANDARD), ruff and mypy on our own code.
lint: $(STAMP) $(BUF)
	$(BUF) lint protos
	$(VENV)/bin/ruff check libs/fractal_grpc services tests bench
	$(VENV)/bin/ruff format --check libs/fractal_grpc services tests bench
	$(VENV)/bin/mypy

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit
test-service: $(STAMP)
	$(PY) -m pytest tests/service
test-e2e: $(STAMP)
	$(PY) -m pytest tests/e2e

## bench: benchmarks; results in bench/results/, summary in bench/README.md (needs h2load).
bench: $(STAMP)
	@command -v h2load >/dev/null || $$([ "$$(id -u)" = 0 ] || echo sudo) sh -c 'apt-get install -y nghttp2-client || { apt-get update && apt-get install -y nghttp2-client; }' \
		|| echo "bench: h2load not installed (apt-get install nghttp2-client, as root); the h2load rows are skipped" >&2
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .tools $(GEN_DIR)/fractal .state
