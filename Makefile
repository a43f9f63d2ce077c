# Every target sets itself up: `make test` on a fresh machine creates .venv, installs the
# package with its test extras and makes sure a redis-server binary exists.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck bench bench-short bench-scaling bench-env redis clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

redis:
	@sh scripts/ensure-redis.sh

test: $(STAMP) redis
	$(BIN)/ruff check aioqueue tests examples benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest

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

bench: bench-env
	.bench-venv/bin/python -m benchmarks.run

bench-short: bench-env
	.bench-venv/bin/python -m benchmarks.run --short

bench-scaling: bench-env
	.bench-venv/bin/python -m benchmarks.scaling

clean:
	rm -rf $(VENV) .bench-venv .mypy_cache .ruff_cache
