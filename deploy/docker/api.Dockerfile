# syntax=docker/dockerfile:1
# The api image: `fractal-api serve` (public listener + internal listener), `fractal-api migrate`.
# Build from the repository root:  docker build -f deploy/docker/api.Dockerfile -t fractal-api .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the protobuf stubs (the Makefile's `make protos`) and a venv with libs + api ---------
FROM ${PYTHON_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Every third-party package at the version of requirements.lock (the versions the tests ran).
COPY requirements.lock ./
# The stub generator lives in its own venv and stays in this stage.
RUN python -m venv /opt/protoc \
    && /opt/protoc/bin/pip install --no-cache-dir -c requirements.lock grpcio-tools mypy-protobuf
COPY Makefile ./
COPY protos/ protos/
COPY libs/ libs/
COPY services/api/ services/api/
RUN make protos VENV=/opt/protoc \
    && python -m venv /opt/fractal \
    && /opt/fractal/bin/pip install --no-cache-dir -c requirements.lock ./libs ./services/api

# --- runtime: the venv only, run as an unprivileged user -------------------------------------------
FROM ${PYTHON_IMAGE} AS api
RUN groupadd --system --gid 10001 fractal \
    && useradd --system --uid 10001 --gid fractal --home-dir /var/lib/fractal --create-home \
        --shell /usr/sbin/nologin fractal
COPY --from=build /opt/fractal /opt/fractal
ENV PATH=/opt/fractal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/fractal
# Public API (FRACTAL_API_ADDRESS) and internal listener (FRACTAL_API_INTERNAL_ADDRESS); bind them
# to 0.0.0.0 in a container (the defaults are loopback).
# 9451: Prometheus metrics (FRACTAL_API_METRICS_ADDRESS).
EXPOSE 50051 50053 9451
ENTRYPOINT ["fractal-api"]
CMD ["serve"]
