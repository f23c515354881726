# Every target uses the project's own virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test test-tools lint conformance bench clean

$(BIN)/halflife: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m engine.warmup  # compiles the numba kernels once (50-70 s); later runs load the cache
	@touch $@

venv: $(BIN)/halflife

demo: venv
	$(BIN)/halflife demo

# The system binaries the tests start (redis-server, prometheus, promtool), installed with apt when missing.
test-tools:
	bash .ci/install-test-tools

# Two workers, a test file each: most of the suite waits on subprocesses, Redis and timers.
test: venv test-tools
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

conformance: venv
	../shared/conformance/run.sh

lint: venv
	$(BIN)/ruff check engine operators rules bench tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
