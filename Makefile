# fractal-grpc: every entry point. `make run` and `make test` are the two that matter.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := .tools/node_modules/.bin/buf
PROTO_FILES := $(shell find protos/fractal -name '*.proto')
# The gRPC service config of every client (retries, wait-for-ready), shipped with the stubs.
SERVICE_CONFIG := protos/service_config.json
# Third-party protos our protos import (buf.validate rules), vendored with their licence.
VENDORED_PROTOS := protos/third_party/protovalidate
GEN_DIR := libs
STAMP := $(VENV)/.installed
UV := $(VENV)/bin/uv
# Every third-party package, pinned (make lock); our own packages are installed from here.
LOCK := requirements.lock
PACKAGES := libs libs/devstack libs/cli services/api services/runner services/collector
LOCK_FLAGS := --universal --python-version 3.11 --quiet --custom-compile-command "make lock" \
	$(foreach name,fractal-grpc-libs fractal-devstack fractal-cli fractal-api fractal-runner fractal-collector,--no-emit-package $(name))

.PHONY: run test lint protos install lock bench acceptance-collect clean test-unit test-service test-e2e cluster test-tools

## run: the whole suite on embedded PostgreSQL and NATS (or FRACTAL_DATABASE_URL / FRACTAL_NATS_URL).
run: $(STAMP)
	$(VENV)/bin/fractal-dev run

## test: install what the tests need, lint, and run every test.
test: $(STAMP) lint cluster test-tools
	$(PY) -m pytest

## test-tools: system tools the tests drive (tmux: tests/cli draws the progress display in a
## real terminal), installed with apt only when missing.
test-tools:
	@command -v tmux >/dev/null || $$([ "$$(id -u)" = 0 ] || echo sudo) sh -c 'apt-get install -y tmux || { apt-get update && apt-get install -y tmux; }'

## cluster: the one-node SLURM cluster and loopback sshd of tests/slurm (deploy/local), brought up
## only when deploy/local/check.sh says it is not up (as root, or through sudo).
cluster:
	@deploy/local/check.sh -q 2>/dev/null || $$([ "$$(id -u)" = 0 ] || echo sudo) deploy/local/up.sh

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# uv, bootstrapped at the lock's version; from then on the lock keeps it at that version.
$(UV): | $(VENV)/bin/python
	$(PY) -m pip install --quiet "$$(grep -E '^uv==' $(LOCK))"

# Exactly the lock (`uv pip sync` also removes whatever is not in it), then the stubs
# (grpcio-tools generates them), then our packages in editable mode (the stub package must exist
# when libs is installed) without dependencies: the lock has them all. A dependency added without
# `make lock` stops the install, named (the loop for requirements-dev.txt, `uv pip check` for
# the packages').
$(STAMP): $(LOCK) requirements-dev.txt libs/pyproject.toml libs/devstack/pyproject.toml libs/cli/pyproject.toml services/*/pyproject.toml $(PROTO_FILES) $(SERVICE_CONFIG) $(VENDORED_PROTOS)/buf/validate/validate.proto | $(UV)
	@for name in $$(sed -e 's/#.*//' -e 's/[][<>=!~;[:space:]].*//' requirements-dev.txt); do \
		grep -qiE "^$${name//_/-}==" $(LOCK) \
			|| { echo "make install: $$name is not in $(LOCK); run make lock" >&2; exit 1; }; \
	done
	$(UV) pip sync --quiet --python $(PY) $(LOCK)
	$(MAKE) protos
	$(UV) pip install --quiet --python $(PY) --no-deps --build-constraints $(LOCK) \
		$(addprefix -e ,$(PACKAGES))
	$(UV) pip check --quiet --python $(PY) \
		|| { echo "make install: a dependency is missing from $(LOCK); run make lock" >&2; exit 1; }
	touch $(STAMP)

## lock: re-resolve requirements.lock from requirements.in (the packages' pyprojects and
## requirements-dev.txt) after a dependency changed, keeping every other pin as it is.
## `make lock UPGRADE=1` moves everything to the newest versions; `make lock UPGRADE=protobuf` one.
lock: | $(UV)
	$(UV) pip compile requirements.in $(LOCK_FLAGS) -o $(LOCK) \
		$(if $(UPGRADE),$(if $(filter 1,$(UPGRADE)),--upgrade,--upgrade-package $(UPGRADE)))

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
	# Our files with their comments, for server reflection (grpckit/reflection_docs.py).
	$(PY) -m grpc_tools.protoc -I protos -I $(VENDORED_PROTOS) --include_source_info \
		--descriptor_set_out=$(GEN_DIR)/fractal/descriptors.binpb $(PROTO_FILES)
	find $(GEN_DIR)/fractal $(GEN_DIR)/buf -type d -exec touch {}/__init__.py \;
	cp $(SERVICE_CONFIG) $(GEN_DIR)/fractal/service_config.json

$(BUF):
	npm install --prefix .tools --no-save --silent @bufbuild/buf

## lint: buf lint (STANDARD and COMMENTS), ruff and mypy on our own code.
lint: $(STAMP) $(BUF)
	$(BUF) lint protos
	$(VENV)/bin/ruff check libs/fractal_grpc libs/devstack libs/cli services tests bench
	$(VENV)/bin/ruff format --check libs/fractal_grpc libs/devstack libs/cli services tests bench
	$(VENV)/bin/mypy

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit
test-service: $(STAMP)
	$(PY) -m pytest tests/service
test-e2e: $(STAMP)
	$(PY) -m pytest tests/e2e

## bench: benchmarks, ours and fractal-server 2.3.11 (installed under .state/bench/) taking
## turns; results in bench/results/, summary in bench/README.md (needs h2load).
## `make bench QUICK=1`: the short variant (--quick).
bench: $(STAMP)
	@command -v h2load >/dev/null || $$([ "$$(id -u)" = 0 ] || echo sudo) sh -c 'apt-get install -y nghttp2-client || { apt-get update && apt-get install -y nghttp2-client; }' \
		|| echo "bench: h2load not installed (apt-get install nghttp2-client, as root); the h2load rows are skipped" >&2
	$(PY) -m bench.run $(if $(QUICK),--quick)

# Collects the published fractal-tasks-core through api + collector (uv, pip) and by a plain
# venv + pip, cold and warm caches; downloads some hundred MB. Not part of `make test`.
acceptance-collect: $(STAMP)
	$(PY) -m bench.acceptance_collect $(if $(ROUNDS),--rounds $(ROUNDS))

clean:
	rm -rf $(VENV) .tools $(GEN_DIR)/fractal .state
