# The two set-up commands of the README: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel; a bare `torch` requirement would pull gigabytes of CUDA packages. Override for a GPU machine.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench bench-variants clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev,export,gpu]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/lstmkit demo --out demo_out

lint: install
	$(BIN)/ruff check lstmkit tests benchmarks

test: lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench_lstm.py

bench-variants: install
	$(BIN)/python benchmarks/bench_variants.py

clean:
	rm -rf $(VENV) demo_out build *.egg-info .pytest_cache .ruff_cache
