# The two commands a newcomer needs: `make demo` and `make test`.
# Each installs what it needs first (OS packages when absent, then .venv).
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.edgefleet-installed

.PHONY: demo test lint typecheck bench clean

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

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/agent_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
