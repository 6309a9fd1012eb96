# syntax=docker/dockerfile:1
# The coupon worker's image: python:3.11-slim, dependencies from uv.lock only, non-root.
#
#   docker build -t coupon-worker .
#   docker run --rm -e AMQP_URL=... -e DATABASE_URL=... coupon-worker            # consume
#   docker run --rm -e DATABASE_URL=... coupon-worker migrate                     # one-shot
#   docker run --rm -e AMQP_URL=... coupon-worker publish create --code X --init-count 3 --wait
#
# Stop it with SIGTERM and give it longer than WORKER_GRACE_PERIOD (25 s by default):
# `docker stop -t 40` (docker-compose.yml sets stop_grace_period: 40s).

ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# --- builder: resolve nothing, install exactly what uv.lock says ------------------------------
FROM python:${PYTHON_VERSION}-slim AS builder
COPY --from=uv /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app

# Dependencies first, so that a change to the code alone reuses this layer. The workspace's
# member (contracts/, the coupon-contracts distribution) is declared by its pyproject.toml;
# neither project is installed yet.
COPY pyproject.toml uv.lock ./
COPY contracts/pyproject.toml ./contracts/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra tracing --no-install-workspace

# Then both projects, installed as wheels (not editable): coupon-contracts (contracts/, its
# README and CHANGELOG included) and the worker, whose wheel ships worker/ and migrations/ (the
# alembic environment and revisions, found as a package resource by `coupon-worker migrate`
# and `run --migrate`), so the image needs no source tree.
COPY README.md ./
COPY contracts ./contracts
COPY worker ./worker
COPY migrations ./migrations
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --extra tracing

# --- runtime ----------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 coupon \
    && useradd --system --uid 10001 --gid coupon --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin coupon
WORKDIR /app
# Owned by root and read-only to the worker's user: the process cannot rewrite its own code.
COPY --from=builder /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WORKER_LOG_FORMAT=json \
    WORKER_HEALTH_FILE=/tmp/coupon-worker.health \
    WORKER_HTTP_HOST=0.0.0.0 \
    WORKER_HTTP_PORT=8080
USER coupon:coupon

# /healthz, /readyz and /metrics (Prometheus) on WORKER_HTTP_PORT. The health check asks
# /healthz: the process is alive and its event loop responsive (an outage of PostgreSQL or
# RabbitMQ does not make it unhealthy: the worker rides those out itself). Orchestrators route
# readiness to /readyz. `coupon-worker healthcheck` without --http still checks the file that
# `run` touches every 5 s (WORKER_HEALTH_FILE), for exec probes elsewhere.
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["coupon-worker", "healthcheck", "--http", "/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["coupon-worker"]
CMD ["run"]
