# Two commands: `make demo` (the main job) and `make test`. Each sets itself up idempotently.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip install --quiet -c constraints.txt

.PHONY: demo test bench install browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependency list or the pinned torch changes.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==$$(sed -n 's/^torch==//p' constraints.txt)
	$(PIP) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/halluscope demo

# The app's browser test drives Debian's chromium. Install it where we can (as root, with
# apt-get: CI); elsewhere the test is skipped with its reason printed.
browser:
	@command -v chromium >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: chromium is not installed; the browser test will be skipped"

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# transformers, the peer the speed benchmarks compare against, lives only in the `bench` extra.
# Where it cannot be installed (offline), those columns are skipped with the reason printed.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PIP) -e '.[dev,bench]' && touch $(BENCH_STAMP) || echo "note: the bench extra did not install"

# The default suite (about 10 minutes on 2 cores), then docs/benchmarks.md regenerated.
# On a shared machine: make bench BENCH_ARGS="--threads 1 --clock cpu".
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
