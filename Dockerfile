# syntax=docker/dockerfile:1
# One image for every vidrec process: gateway, candidate, ranker, reranker, trainer, and the
# `vidrec` CLI (bootstrap, retrain). The process is picked by the command:
#   docker run vidrec -m services.candidate      (ENTRYPOINT is the venv's python)
#
# The install is the README's own set-up, `make setup` (venv + `pip install -e '.[dev]'` +
# protoc), so the image and a developer's machine cannot drift apart.
#
# torch comes from PyTorch's CPU index unless told otherwise; a GPU image for retraining:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t vidrec:gpu .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
# pip reads PIP_EXTRA_INDEX_URL, so the Makefile's `pip install -e '.[dev]'` takes torch
# (pinned in pyproject.toml) as the CPU wheel: a +cpu local version outranks the PyPI one.
ENV PIP_EXTRA_INDEX_URL=${TORCH_INDEX_URL} \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=cache,target=/root/.cache/pip \
    make setup \
    && .venv/bin/python -c "import torch, vidrec.v1.gateway_pb2_grpc; print('torch', torch.__version__)"

FROM ${PYTHON_IMAGE}
# A fixed uid so Kubernetes' runAsNonRoot/runAsUser and volume ownership line up.
RUN groupadd --system --gid 10001 vidrec \
    && useradd --system --uid 10001 --gid vidrec --create-home --home-dir /home/vidrec vidrec \
    && mkdir -p /data \
    && chown vidrec:vidrec /data
# Same path as in the build stage: the venv and the editable install point at /app.
# Code stays root-owned, so the service user can read but not change it.
COPY --from=build /app /app
WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
# /data holds artifacts, data and (compose) the shared volume; created above so a fresh
# named volume inherits the vidrec owner.
EXPOSE 50051 50052 50053 50054
ENTRYPOINT ["/app/.venv/bin/python"]
CMD ["-m", "services.gateway"]
