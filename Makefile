# gm — the README's commands. `make test` installs everything it needs from nothing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install test demo lint bench bench-pipelines clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider --timeout=900 tests

demo: $(STAMP)
	$(BIN)/gm train digits-demo

lint: $(STAMP)
	$(BIN)/ruff check gm commands tests bench

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/run.py

bench-pipelines: $(STAMP)
	$(BIN)/python bench/pipelines.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
