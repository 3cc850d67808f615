# Everything CI and a new user run goes through these targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install demo test test-slow lint format bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on these machines, never a CUDA download.
	$(BIN)/python -m pip install --quiet 'torch==2.13.0'
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: set up, train and register the demo models on the embedded default (SQLite + ./.berth),
## then serve them on 127.0.0.1:$(PORT) (Ctrl-C stops; SERVE=0 skips serving)
SERVE ?= 1
PORT ?= 8000
demo: install
	$(BIN)/berth demo
	@if [ "$(SERVE)" = "1" ]; then $(BIN)/berth serve --port $(PORT); fi

## test: set up, lint, then the whole default suite
test: install lint
	$(BIN)/python -m pytest

## test-slow: the long tests too (large registries, repeated kill -9 rounds)
test-slow: install
	$(BIN)/python -m pytest -m ''

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

## bench: registry and load-time figures into bench/results/
bench: install
	$(BIN)/python bench/registry_bench.py

## bench-serve: realtime serving figures (wrk against berth serve, a minimal FastAPI app and the
## in-process floor) into bench/results/serve.{json,md}; installs wrk with apt-get when missing
.PHONY: bench-serve
bench-serve: install
	@command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y wrk; \
		else sudo apt-get update && sudo apt-get install -y wrk; fi; }
	$(BIN)/python bench/serve_bench.py

## bench-batch: batch scoring figures (berth batch run against the in-process floor and a naive
## pandas script, on 1M and 10M credit rows and 100k texts) into bench/results/batch.{json,md}
.PHONY: bench-batch
bench-batch: install
	$(BIN)/python bench/batch_bench.py

## bench-oip: Berth's hand-written OIP request decoding against a pydantic model of the request
## (what MLServer does), into bench/results/oip_decode.json
.PHONY: bench-oip
bench-oip: install
	$(BIN)/python bench/oip_decode_bench.py

clean:
	rm -rf $(VENV) .berth .pytest_cache .mypy_cache .ruff_cache

## bench-peers: Berth against its peers on the same models (a bare FastAPI app, the strongest
## simple FastAPI app, MLServer 1.7, BentoML 1.4 with and without adaptive batching) under wrk,
## rounds alternating, into bench/results/peers.{json,md}; each peer's venv is built once under
## bench/peers/.venvs/ from bench/peers/requirements-*.txt; installs wrk with apt-get when missing
.PHONY: bench-peers
bench-peers: install
	@command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y wrk; \
		else sudo apt-get update && sudo apt-get install -y wrk; fi; }
	$(BIN)/python bench/peers_bench.py

## bench-batching: the latency target's curve (sentiment, p99 and req/s against target_p99_ms
## at 1 to 32 connections, and without a target) into bench/results/batching_sweep.{json,md,png};
## QUICK=1 for short runs; installs wrk with apt-get when missing
.PHONY: bench-batching
bench-batching: install
	@command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y wrk; \
		else sudo apt-get update && sudo apt-get install -y wrk; fi; }
	$(BIN)/python bench/batching_sweep.py $(if $(QUICK),--quick)
