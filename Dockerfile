# syntax=docker/dockerfile:1
# One lean image for every vidrec process: gateway, candidate, ranker, reranker, trainer, and
# the `vidrec` CLI (bootstrap, retrain). The process is picked by the command:
#   docker run vidrec -m services.candidate      (ENTRYPOINT is the venv's python)
#
# Runtime dependencies only: no dev tools, no grpcio-tools (protoc runs in a throwaway venv
# of the build stage), no tests or benchmarks, no embedded Redis/Kafka binaries (those are
# the `embedded` extra that `make run` uses). The same constraints file as `make setup`
# pins torch. Layers: dependencies first (from pyproject.toml + constraints.txt), so a
# source edit reinstalls only the package, never torch.
#
# torch comes from PyTorch's CPU index unless told otherwise; a GPU image for retraining:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t vidrec:gpu .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_EXTRA_INDEX_URL=${TORCH_INDEX_URL} \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /app/.venv \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/runtime.txt \
    && /app/.venv/bin/pip install -c constraints.txt -r /tmp/runtime.txt
COPY protos protos
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /tmp/tools \
    && /tmp/tools/bin/pip install -c constraints.txt grpcio-tools \
    && mkdir -p /tmp/gen \
    && /tmp/tools/bin/python -m grpc_tools.protoc -I protos --python_out=/tmp/gen \
       --pyi_out=/tmp/gen --grpc_python_out=/tmp/gen protos/vidrec/v1/*.proto
COPY vidrec vidrec
COPY services services
RUN cp /tmp/gen/vidrec/v1/*_pb2* vidrec/v1/ \
    && /app/.venv/bin/pip install --no-deps . \
    && /app/.venv/bin/python -c "import torch, vidrec.v1.gateway_pb2_grpc, services.gateway; print('torch', torch.__version__)"

FROM ${PYTHON_IMAGE}
# A fixed uid so Kubernetes' runAsNonRoot/runAsUser and volume ownership line up.
RUN groupadd --system --gid 10001 vidrec \
    && useradd --system --uid 10001 --gid vidrec --create-home --home-dir /home/vidrec vidrec \
    && mkdir -p /data \
    && chown vidrec:vidrec /data
# Only the virtualenv: vidrec and services are installed into it (not editable), so the
# image holds no source tree, tests or benchmarks. Root-owned: the service user can read
# but not change it.
COPY --from=build /app/.venv /app/.venv
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
