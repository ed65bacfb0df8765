# gm — the README's commands. `make test` installs everything it needs from nothing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install test demo lint bench bench-pipelines wheel clean

$(STAMP): pyproject.toml setup.py
	@echo "gm: [1/3] creating the virtual environment $(VENV) (if missing)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "gm: [2/3] upgrading pip"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "gm: [3/3] installing gm and its dependencies (the first time downloads torch, ~1 GB: minutes)"
	@$(BIN)/python -m pip install --progress-bar on -e '.[test]' | grep -v '^Requirement already satisfied' || true
	@echo "gm: test oracle k-diffusion (without its pins; see pyproject.toml)"
	@$(BIN)/python -m pip install --quiet --no-deps 'k-diffusion>=0.1.1'
	@$(BIN)/python -c "import gm.commands.app" || { echo "gm: install failed (see above)"; exit 1; }
	@touch $(STAMP)
	@echo "gm: installed; the command is $(BIN)/gm"

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider --timeout=900 tests

demo: $(STAMP)
	@echo "gm: training presets/digits-demo.toml: 1000 steps on synthetic digits, one CPU thread, no download (progress below)"
	$(BIN)/gm train digits-demo

lint: $(STAMP)
	$(BIN)/ruff check gm commands tests bench

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/run.py

bench-pipelines: $(STAMP)
	$(BIN)/python bench/pipelines.py

wheel:
	$(PY) -m pip wheel --no-deps -w dist .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache build dist
