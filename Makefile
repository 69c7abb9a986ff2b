# Graft: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench-science bench-registry clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
# The dashboard's browser test drives Debian's chromium (a test tool's own browser download cannot work).
$(STAMP): pyproject.toml $(VENV)/bin/python
	command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# `make demo SIZE=tiny` is CI's reduced run (under ~2 minutes); the default is the full story.
demo: install
	$(VENV)/bin/graft demo $(if $(SIZE),--size $(SIZE))

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check app workers transplant graft tests bench
	$(VENV)/bin/lint-imports

bench-science: install
	$(PY) -m bench.science

bench-registry: install
	$(PY) -m bench.registry

clean:
	rm -rf $(VENV) .graft .pytest_cache
