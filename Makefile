# The two set-up commands of the README: `make reproduce` and `make test`.
# Each creates (or reuses) a local virtualenv and installs what it needs from nothing: the library
# and every extra (notebooks, hub, dev, docs; see pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
# CPU build from the local disk here; on a CUDA machine set TORCH="torch" (or a CUDA wheel spec).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PROFILE ?= quick
OUT ?= results

.PHONY: reproduce test test-browser install lab bench docs clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[notebooks,hub,dev,docs]"
	touch $@

install: $(BIN)/.installed

reproduce: install
	$(BIN)/ctrkit reproduce --dataset both --profile $(PROFILE) --out $(OUT) --figures figures

test: install
	$(BIN)/python -m pytest -q tests

# The real-browser test of 06_explore alone (JupyterLab + headless Chromium; part of `make test` too).
test-browser: install
	$(BIN)/python -m pytest -q tests/test_e2e_browser.py

lab: install
	$(BIN)/jupyter lab notebooks/

bench: install
	$(BIN)/python bench/run_all.py

# The documentation site (mkdocs.yml, docs/) into site/; warnings are errors (a broken link or
# an API page naming a module that no longer exists fails the build).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache site
