SHELL := /bin/bash
# Thin wrappers; everything real lives in pyproject.toml and pipeline/.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# pip prints a warning per package for offline wheel indexes some machines configure; hide those
# lines but keep pip's exit status.
QUIET   := 2>&1 | { grep -v "is neither a file nor a directory" || true; }; test $${PIPESTATUS[0]} -eq 0

.PHONY: venv sysdeps demo test test-fast lint bench clean

venv: $(STAMP)

# Re-install only when pyproject.toml changes; an existing venv is reused.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip $(QUIET)
	$(BIN)/python -m pip install --quiet -e '.[viz,test]' $(QUIET)
	touch $(STAMP)

# espeak-ng + sox generate the speech the tests run on, and the ffmpeg CLI wraps it in containers
# (Debian/Ubuntu packages); at run time PyAV's bundled FFmpeg decodes.
sysdeps:
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null && command -v ffmpeg >/dev/null || \
	  ( $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq espeak-ng sox libsox-fmt-all ffmpeg >/dev/null )

demo: venv
	$(BIN)/python jobs/demo.py

test: venv sysdeps
	$(BIN)/python -m pytest -q

test-fast: venv sysdeps
	$(BIN)/python -m pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check pipeline jobs tests bench
	$(BIN)/ruff format --check pipeline jobs tests bench

bench: venv
	$(BIN)/python bench/model.py

clean:
	rm -rf outputs .pytest_cache
