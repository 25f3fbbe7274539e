# syntax=docker/dockerfile:1
# The collector image, in two flavours (build targets), both with `fractal-collector` as entry
# point and uv (pinned by requirements.lock, beside the service's Python) as the installer:
#   local     (default): task environments made in FRACTAL_TASKS_DIR, on a volume the runners share
#   slurm-ssh: plus an SSH client, for sites whose environments live on the cluster (slurm_ssh)
# Build from the repository root:
#   docker build -f deploy/docker/collector.Dockerfile -t fractal-collector .
#   docker build -f deploy/docker/collector.Dockerfile --target slurm-ssh -t fractal-collector:slurm-ssh .
# The task environments' Python is this image's (/usr/local/bin/python3.11), the same base image
# as the runner's, so an environment made here runs in a runner container.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the protobuf stubs (the Makefile's `make protos`) and a venv with libs + collector --
FROM ${PYTHON_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Every third-party package at the version of requirements.lock (the versions the tests ran),
# uv included: the collector's pyproject depends on it, so it lands in /opt/fractal/bin.
COPY requirements.lock ./
# The stub generator lives in its own venv and stays in this stage.
RUN python -m venv /opt/protoc \
    && /opt/protoc/bin/pip install --no-cache-dir -c requirements.lock grpcio-tools mypy-protobuf
COPY Makefile ./
COPY protos/ protos/
COPY libs/ libs/
COPY services/collector/ services/collector/
RUN make protos VENV=/opt/protoc \
    && python -m venv /opt/fractal \
    && /opt/fractal/bin/pip install --no-cache-dir -c requirements.lock ./libs ./services/collector

# --- runtime: what both flavours share --------------------------------------------------------------
# (setpriv, which ties an installer's life to the collector's, is in util-linux: in the base image.)
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 fractal \
    && useradd --system --uid 10001 --gid fractal --home-dir /var/lib/fractal --create-home \
        --shell /usr/sbin/nologin fractal
COPY --from=build /opt/fractal /opt/fractal
ENV PATH=/opt/fractal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FRACTAL_TASKS_DIR=/var/lib/fractal/tasks
USER 10001:10001
WORKDIR /var/lib/fractal
# Health and reflection (FRACTAL_COLLECTOR_ADDRESS; bind it to 0.0.0.0 in a container), and
# Prometheus metrics (FRACTAL_COLLECTOR_METRICS_ADDRESS).
EXPOSE 50054 9453
ENTRYPOINT ["fractal-collector"]
CMD ["serve"]

# --- slurm-ssh: an SSH client for sites whose task environments are made on the cluster -------
FROM runtime AS slurm-ssh
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client \
    && rm -rf /var/lib/apt/lists/*
USER 10001:10001

# --- local (default): no SSH client, nothing added ---------------------------------------------
FROM runtime AS local
