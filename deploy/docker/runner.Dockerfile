# syntax=docker/dockerfile:1
# The runner image, in two flavours (build targets), both with `fractal-runner` as entry point:
#   slurm-ssh  (default): the runner with an SSH client, for `slurm_ssh` sites and the local backend
#   slurm-sudo: plus the SLURM client tools, munge and sudo, for `slurm_sudo` sites
# Build from the repository root:
#   docker build -f deploy/docker/runner.Dockerfile --target slurm-ssh -t fractal-runner .
#   docker build -f deploy/docker/runner.Dockerfile --target slurm-sudo -t fractal-runner:slurm-sudo .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the protobuf stubs (the Makefile's `make protos`) and a venv with libs + runner ------
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
COPY services/runner/ services/runner/
RUN make protos VENV=/opt/protoc \
    && python -m venv /opt/fractal \
    && /opt/fractal/bin/pip install --no-cache-dir -c requirements.lock ./libs ./services/runner

# --- runtime: what both flavours share --------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 fractal \
    && useradd --system --uid 10001 --gid fractal --home-dir /var/lib/fractal --create-home \
        --shell /usr/sbin/nologin fractal
COPY --from=build /opt/fractal /opt/fractal
ENV PATH=/opt/fractal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/fractal
# Health and reflection (FRACTAL_RUNNER_ADDRESS; bind it to 0.0.0.0 in a container), and
# Prometheus metrics (FRACTAL_RUNNER_METRICS_ADDRESS).
EXPOSE 50052 9452
ENTRYPOINT ["fractal-runner"]
CMD ["serve"]

# --- slurm-sudo: sbatch/squeue/scancel as the job's user through `sudo -u` ------------------------
# The pod must run munged beside the runner (the munge key of the cluster), know the cluster's
# users (NSS) and allow privilege escalation for sudo: see deploy/README.md.
FROM runtime AS slurm-sudo
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends slurm-client munge sudo \
    && rm -rf /var/lib/apt/lists/* \
    && printf 'Defaults:fractal !requiretty\nfractal ALL=(ALL,!root) NOPASSWD: ALL\n' \
        > /etc/sudoers.d/fractal \
    && chmod 0440 /etc/sudoers.d/fractal \
    && visudo --check --file=/etc/sudoers.d/fractal
USER 10001:10001

# --- slurm-ssh (default): the runner with an SSH client only -------------------------------------
FROM runtime AS slurm-ssh
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client \
    && rm -rf /var/lib/apt/lists/*
USER 10001:10001
