# The two commands a newcomer needs: `make demo` and `make test`.
# Each installs what it needs first (OS packages when absent, then .venv).
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.edgefleet-installed

.PHONY: demo test lint typecheck bench clean test-tflite-runtime

$(STAMP): pyproject.toml
	scripts/system-deps.sh demo
	scripts/bootstrap.sh
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgefleet demo

test: $(STAMP)
	scripts/system-deps.sh test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

# The fallback TFLite backend (tflite-runtime 2.14, numpy < 2) in a venv of its own.
test-tflite-runtime:
	scripts/check-tflite-runtime.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/agent_overhead.py

clean:
	rm -rf $(VENV) .venv-tflite-runtime .pytest_cache .mypy_cache .ruff_cache
