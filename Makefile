# The two commands of README.md. Both build the virtual environment on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test test-quick lint clean k8s

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

# Regenerate k8s/base/generated/ (serveConfigV2, policy thresholds) from
# orchestration/serve_config.yaml; run after editing it (a k8s test checks).
k8s: $(BIN)/fraudmesh
	$(BIN)/python -m orchestration.k8s

clean:
	rm -rf $(VENV) .fraudmesh
