# syntax=docker/dockerfile:1.7
# One image, two commands: `graft serve` (the default) and `graft worker`.
#
#   docker build -t graft:cpu .                                  # API, and CPU workers
#   docker build -t graft:cuda --target worker-cuda .            # GPU workers
#
# Base images are pinned by tag; pin them by digest too (`tag@sha256:...`) where your registry
# policy asks for it. Bumping Python or CUDA is a change to these ARGs only.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# source: only what `pip install .` needs (see .dockerignore), shared by both builders.
# ---------------------------------------------------------------------------------------------
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY app /src/app
COPY workers /src/workers
COPY transplant /src/transplant
COPY graft /src/graft
COPY migrations /src/migrations

# ---------------------------------------------------------------------------------------------
# builders: a virtual environment at /opt/venv holding torch (CPU or CUDA wheels) and Graft.
# torch goes first, pinned, in its own layer: it is most of the image and changes least. An
# unpinned torch from PyPI would pull gigabytes of CUDA packages into the CPU image. Afterwards
# `pip install .` finds torch==2.13.0 satisfied (a `+cpu`/`+cu128` local version matches the pin)
# and installs Graft and the rest of its dependencies only.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

FROM venv AS builder
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch==2.13.0 --index-url "${TORCH_CPU_INDEX_URL}"
COPY --from=source /src /src
RUN pip install --no-cache-dir /src \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"

FROM venv AS builder-cuda
# Match the CUDA flavour of the wheel to CUDA_IMAGE and to the hosts' drivers (cu128: driver >= 570).
ARG TORCH_CUDA_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --no-cache-dir torch==2.13.0 --index-url "${TORCH_CUDA_INDEX_URL}"
COPY --from=source /src /src
RUN pip install --no-cache-dir /src \
    && python -c "import torch; assert torch.version.cuda, 'not a CUDA build of torch'"

# ---------------------------------------------------------------------------------------------
# worker-cuda: the CUDA virtual environment on an NVIDIA CUDA base, for `graft worker` on GPUs.
# The CUDA torch wheel carries its own CUDA libraries (cuBLAS, cuDNN, ...), so the small `base`
# flavour is enough: it sets NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES, which make the
# NVIDIA container toolkit inject the host driver. Python is the builder's, copied from /usr/local
# (same interpreter as the CPU image), with the Ubuntu packages of the libraries it links against.
# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS worker-cuda
ARG DEBIAN_FRONTEND=noninteractive
# The shared libraries the python:3.11 build links against (ssl, sqlite, ffi, ...), Ubuntu names.
# Not version-pinned: the Ubuntu archive drops superseded versions, so pins break rebuilds; the
# base image tag fixes the release and the import check below catches a missing library.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates libbz2-1.0 libexpat1 libffi8 libgdbm6t64 liblzma5 libncursesw6 \
        libreadline8t64 libsqlite3-0 libssl3t64 libuuid1 tzdata zlib1g \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder-cuda /usr/local /usr/local
COPY --from=builder-cuda /opt/venv /opt/venv
COPY docker/healthcheck.py /usr/local/bin/graft-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRAFT_DATA_DIR=/data
# Fail the build, not the first job, if the copied interpreter misses a shared library.
RUN ldconfig \
    && python -c "import bz2, ctypes, lzma, sqlite3, ssl, uuid, zlib, torch, app, workers" \
    && useradd --system --uid 10001 --user-group --home-dir /home/graft --create-home graft \
    && mkdir -p /data && chown graft:graft /data && chmod 0755 /usr/local/bin/graft-healthcheck
USER 10001:10001
WORKDIR /home/graft
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["graft-healthcheck"]
ENTRYPOINT ["graft"]
CMD ["worker"]

# ---------------------------------------------------------------------------------------------
# runtime (the default target): slim Python, CPU torch; the API, and workers without GPUs.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="graft" \
      org.opencontainers.image.description="Registry of transplantable neural-network modules"
COPY --from=builder /opt/venv /opt/venv
COPY docker/healthcheck.py /usr/local/bin/graft-healthcheck
RUN useradd --system --uid 10001 --user-group --home-dir /home/graft --create-home graft \
    && mkdir -p /data && chown graft:graft /data && chmod 0755 /usr/local/bin/graft-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRAFT_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/graft
VOLUME ["/data"]
EXPOSE 8000
# /healthz for `graft serve`, a Celery ping of this host's node for `graft worker` (see the script).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["graft-healthcheck"]
ENTRYPOINT ["graft"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
