# vidrec — `make run` brings the system up, `make test` runs the tests. Both set up .venv first.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/vidrec/v1/*.proto)
GENERATED := vidrec/v1/gateway_pb2.py
VAR ?= var

.PHONY: help setup run test lint bench protos clean

help: ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH (Python 3.11)"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

$(GENERATED): $(PROTOS) $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	@touch $@

protos: $(GENERATED) ## regenerate vidrec/v1 from protos/

setup: $(STAMP) $(GENERATED) ## create or refresh the virtualenv (.venv) and generated code

run: setup ## bring vidrec up on demo data (synthetic), print recommendations
	$(BIN)/python -m vidrec.run --var $(VAR)

test: setup ## run the test suite
	$(BIN)/python -m pytest -q

lint: setup ## ruff + mypy
	$(BIN)/ruff check vidrec services tests
	$(BIN)/mypy vidrec services

bench: setup ## benchmarks with figures (models vs peers, cold start, large catalog, serving latency, trainer throughput, faults)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean: ## remove generated code and var/ (keeps .venv)
	rm -rf $(VAR) vidrec/v1/*_pb2*.py vidrec/v1/*_pb2*.pyi
