# Every target uses the project's own virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint conformance bench clean

$(BIN)/halflife: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/halflife

demo: venv
	$(BIN)/halflife demo

test: venv
	$(BIN)/python -m pytest -q

conformance: venv
	../shared/conformance/run.sh

lint: venv
	$(BIN)/ruff check engine operators rules bench tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
