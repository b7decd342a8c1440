# syntax=docker/dockerfile:1
# One image for the hub (`inferhub serve`, the default) and the workers (`inferhub worker`).
# Its steps are the scripts .ci/run runs, so that CI proves them (tests/test_operations.py
# checks that they stay so):
#
#   docker build -t inferhub .                 # the runtime image
#   docker build --target test .               # CI in a container: .ci/run, word for word

# --- test: the whole repository and .ci/run (Redis, Chromium and curl from Debian, the test
#     extra into .venv, the suite, ruff, mypy)
FROM python:3.11-slim AS test
WORKDIR /app
COPY . .
RUN bash .ci/run

# --- runtime: slim Python, the project without the test extra (.ci/install, as the README's
#     Start installs it), the committed example models, a non-root user
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin inferhub
WORKDIR /app
COPY pyproject.toml README.md ./
COPY .ci/install .ci/install
COPY contract contract
COPY hub hub
COPY workers workers
COPY cli cli
COPY static static
COPY models models
RUN bash .ci/install
USER inferhub
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    INFERHUB_MODELS=/app/models \
    INFERHUB_HOST=0.0.0.0 \
    INFERHUB_PORT=8000 \
    INFERHUB_GRPC_PORT=8001 \
    INFERHUB_LOG_FORMAT=json
EXPOSE 8000 8001
# SIGTERM: the hub closes its streams and exits within INFERHUB_SHUTDOWN_GRACE_S
STOPSIGNAL SIGTERM
CMD ["inferhub", "serve"]
