# The two commands of the README: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= out
PYTEST_ARGS ?=

.PHONY: demo test bench bench-scoring bench-nightly clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fedfraud needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedfraud demo --out $(OUT)/demo

test: $(STAMP)
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/he_throughput.py
	$(BIN)/python bench/features_speed.py
	$(BIN)/python bench/terminal_stats.py --scenarios 10k,1m-sparse

# The scoring service under gunicorn with locust (needs the handbook data under ../shared; ~4 min).
bench-scoring: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/scoring.py --json $(OUT)/bench/scoring.json --png $(OUT)/bench/scoring.png

# One nightly run (5 banks, CKKS, 100 trees) over HTTP against the same night in one process
# (needs the handbook data under ../shared; ~4 min).
bench-nightly: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/nightly.py --json $(OUT)/bench/nightly.json --png $(OUT)/bench/nightly.png

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
