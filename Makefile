# Thin wrappers; everything real lives in pyproject.toml and pipeline/.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

# Re-install only when pyproject.toml changes; an existing venv is reused.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[s3,viz,test]'
	touch $(STAMP)

demo: venv
	$(BIN)/python jobs/demo.py

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check pipeline jobs tests bench
	$(BIN)/ruff format --check pipeline jobs tests bench

bench: venv
	$(BIN)/python bench/model.py

clean:
	rm -rf outputs .pytest_cache
