# The two commands of README.md. Both build the virtual environment on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test test-quick lint clean

$(BIN)/fraudmesh: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: $(BIN)/fraudmesh
	$(BIN)/fraudmesh demo

test: $(BIN)/fraudmesh
	$(BIN)/python -m pytest -ra

test-quick: $(BIN)/fraudmesh
	$(BIN)/python -m pytest -ra -m "not slow"

lint: $(BIN)/fraudmesh
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .fraudmesh
