"""All configuration, read once from the environment in `main` and passed down.

Over the ~200 lines a module aims for: one `Settings` with every variable docs/operations.md's
Configuration table lists and their validators, which is one list a reader wants in one place.
What the validators need of URLs (several nodes, the heartbeat in each, redaction, the secrets
to scrub) is `worker.addresses`'."""

from __future__ import annotations

import ssl
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final

from pydantic import AmqpDsn, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.addresses import (
    checked_database_url,
    split_amqp_urls,
    split_urls,
    url_secrets,
    urls_heartbeat,
    with_heartbeat,
)


class LogFormat(StrEnum):
    AUTO = "auto"  # JSON lines off a terminal, readable on one
    JSON = "json"
    CONSOLE = "console"


class QueueType(StrEnum):
    QUORUM = "quorum"
    CLASSIC = "classic"


# aiormq ends a connection after 3 x (heartbeat + 1) s without a frame: 15 s with 4.
DEFAULT_HEARTBEAT: Final = 4


class Settings(BaseSettings):
    """Environment variables `WORKER_*`, plus the two service URLs `AMQP_URL` and `DATABASE_URL`.

    Either URL may name several nodes (see `worker.addresses`): `AMQP_URL` as comma-separated
    URLs, `DATABASE_URL` as a host list (`@h1:5432,h2:5433/`, stored in SQLAlchemy's
    `?host=...&host=...` form) with `?target_session_attrs=read-write`."""

    model_config = SettingsConfigDict(env_prefix="WORKER_", frozen=True, extra="ignore")

    # Secrets: the URLs carry passwords, so they are SecretStr and never printed whole.
    amqp_url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@localhost:5672/"),
        validation_alias="AMQP_URL",
        description="RabbitMQ, amqp:// or amqps:// (TLS); several nodes of a cluster as "
        "comma-separated URLs, tried in turn. Its password is never logged.",
    )
    database_url: SecretStr = Field(
        default=SecretStr("postgresql+asyncpg://postgres@localhost:5432/postgres"),
        validation_alias="DATABASE_URL",
        description="PostgreSQL, postgresql+asyncpg://; several hosts as "
        "@h1:5432,h2:5433/db?target_session_attrs=read-write. Its password is never logged.",
    )
    amqp_ca_file: Path | None = Field(
        default=None, description="CA bundle to verify the broker's certificate with amqps://"
    )
    amqp_client_cert: Path | None = Field(
        default=None, description="client certificate (PEM) for brokers that require mutual TLS"
    )
    amqp_client_key: Path | None = Field(
        default=None,
        description="the client certificate's private key, if it is not in the certificate file",
    )

    name_prefix: Annotated[
        str,
        Field(
            max_length=64,
            pattern=r"^[A-Za-z0-9_.-]*$",
            description="prefix on every exchange and queue name (up to 64 of A-Z a-z 0-9 _ . -); "
            "replicas of one service use the same one",
        ),
    ] = ""
    declare_topology: bool = Field(
        default=True,
        description="declare exchanges, queues and bindings at start-up; false: only check "
        "passively that they exist (least privilege)",
    )
    queue_type: QueueType = Field(
        default=QueueType.QUORUM,
        description="quorum or classic, for coupon.worker and coupon.worker.dead",
    )
    delivery_limit: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=20,
        description="x-delivery-limit of the quorum queue (1-1000): after that many deliveries "
        "the broker dead-letters a command",
    )
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=5,
        description="attempts (1-1000) of a command that fails unexpectedly, alone, before it "
        "is dead-lettered as ProcessingFailed",
    )
    # True when an operator's policy gives a queue declared under contract v1 at-least-once
    # dead-lettering (queue arguments cannot change); see docs/operations.md, "Dead letters".
    dead_lettering_by_policy: bool = Field(
        default=False,
        description="true when a broker policy gives a coupon.worker declared under contract "
        "v1 at-least-once dead-lettering (docs/operations.md, Dead letters)",
    )

    # The four defaults below come from the benchmark: docs/performance.md, "How the defaults
    # were chosen".
    prefetch: Annotated[int, Field(ge=1, le=10_000)] = Field(
        default=500, description="unacknowledged deliveries per worker (1-10000)"
    )
    batch_size: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=250, description="most commands handled in one transaction (1-1000)"
    )
    concurrency: Annotated[int, Field(ge=1, le=64)] = Field(
        default=2, description="batches in flight at once (1-64)"
    )
    db_pool_size: Annotated[int, Field(ge=1, le=100)] = Field(
        default=3, description="PostgreSQL connections per worker process (1-100, no overflow)"
    )
    publish_timeout: Annotated[float, Field(gt=0, le=300)] = Field(
        default=30.0,
        description="seconds (up to 300) to wait for the broker to confirm an outcome or a "
        "dead letter; on timeout the command returns to the queue",
    )

    # Silent peers (a partition, a dropped conntrack entry, a frozen VM close no socket): how
    # soon a connection that went quiet is given up. docs/operations.md "Configuration" says what
    # each trades; `worker/keepalive.py` and `worker/db/engine.py` apply them.
    amqp_heartbeat: Annotated[int, Field(ge=0, le=600)] | None = Field(
        default=None,
        description=f"AMQP heartbeat timeout, s (0-600; 0: off); unset: AMQP_URL's heartbeat= "
        f"query, else {DEFAULT_HEARTBEAT}",
    )
    amqp_connect_timeout: Annotated[float, Field(gt=0, le=120)] = Field(
        default=5.0, description="seconds (up to 120) for TCP, TLS and the AMQP handshake"
    )
    db_connect_timeout: Annotated[float, Field(gt=0, le=120)] = Field(
        default=5.0, description="seconds (up to 120) for TCP, TLS and PostgreSQL authentication"
    )
    db_statement_timeout: Annotated[float, Field(gt=0, le=600)] = Field(
        default=5.0, description="seconds (up to 600) any one statement may take"
    )
    tcp_keepalive: Annotated[int, Field(ge=0, le=7200)] = Field(
        default=10, description="idle seconds before TCP keepalive probes start (0: off)"
    )
    grace_period: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=25.0,
        description="seconds (up to 3600) a stop (SIGTERM, SIGINT) waits for commands in flight",
    )
    # Seconds the worker may be unable to consume while the broker accepts connections (and
    # does not block it) before /healthz fails and it exits non-zero for its supervisor to
    # restart it; it starts anew from scratch at a third of this. worker/messaging/supervisor.py
    stuck_limit: Annotated[float, Field(ge=6, le=3600)] = Field(
        default=30.0,
        description="seconds (6-3600) the worker may be unable to consume while the broker "
        "accepts it, before /healthz fails and it exits non-zero",
    )
    retry_max_backoff: Annotated[float, Field(gt=0, le=60)] = Field(
        default=5.0,
        description="most seconds (up to 60) between retries while PostgreSQL is unreachable",
    )
    uvloop: bool = Field(default=True, description="uvloop's event loop, where it exists (Linux)")

    log_format: LogFormat = Field(
        default=LogFormat.AUTO,
        description="auto (JSON lines off a terminal, readable on one), json or console",
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    health_file: Path | None = Field(
        default=None, description="touched every few seconds while the worker consumes"
    )
    http_port: Annotated[int | None, Field(ge=0, le=65535)] = Field(
        default=None,
        description="port of /healthz, /readyz and /metrics; unset: no HTTP server; 0: any "
        "free port (logged)",
    )
    http_host: str = Field(default="127.0.0.1", description="address the HTTP port listens on")

    # Fault injection for the fault-test suite (worker/testing/faults.py), wired only by the
    # composition root (worker/entrypoints/run.py). Never set in production.
    fault_plan: str = Field(
        default="", description="fault injection for the fault-test suite; never in production"
    )

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: SecretStr) -> SecretStr:
        urls = split_amqp_urls(value.get_secret_value())  # an AddressError is a ValueError
        for url in urls:
            AmqpDsn(url)  # raises a ValidationError naming the field
        urls_heartbeat(urls)  # each `heartbeat` query a number, the same on every node
        return SecretStr(",".join(urls))

    @field_validator("amqp_heartbeat")
    @classmethod
    def _one_heartbeat(cls, value: int | None, info: ValidationInfo) -> int | None:
        # The URL's `heartbeat` wins over the default; set in both places, they must agree.
        url = info.data.get("amqp_url")
        urls = split_amqp_urls(url.get_secret_value()) if isinstance(url, SecretStr) else []
        in_url = urls_heartbeat(urls)
        if value is not None and in_url is not None and in_url != value:
            raise ValueError(
                f"WORKER_AMQP_HEARTBEAT={value} disagrees with heartbeat={in_url} in AMQP_URL; "
                "set one of them"
            )
        return value

    @property
    def broker_heartbeat(self) -> int:
        """The AMQP heartbeat timeout the worker asks for: AMQP_URL's `heartbeat` query when it
        has one, else WORKER_AMQP_HEARTBEAT."""
        in_url = urls_heartbeat(self.amqp_urls())
        if in_url is not None:
            return in_url
        return DEFAULT_HEARTBEAT if self.amqp_heartbeat is None else self.amqp_heartbeat

    def broker_urls(self) -> list[str]:
        """AMQP_URL's nodes, each with the heartbeat in its query, where aiormq reads it, in the
        order the connection tries them (secret: they carry the password)."""
        return [with_heartbeat(url, self.broker_heartbeat) for url in self.amqp_urls()]

    def broker_url(self) -> str:
        """The first of `broker_urls()`: for a one-node AMQP_URL, the URL the worker connects to."""
        return self.broker_urls()[0]

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: SecretStr) -> SecretStr:
        return SecretStr(checked_database_url(value.get_secret_value()))

    def amqp_urls(self) -> list[str]:
        """The broker URLs, secrets included, in the order the connection tries them."""
        return split_amqp_urls(self.amqp_url.get_secret_value())

    @field_validator("amqp_ca_file", "amqp_client_cert", "amqp_client_key")
    @classmethod
    def _readable_tls_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Checked here, not at the first connection attempt, where a missing CA file would
        # read like an unreachable broker.
        if value is None:
            return None
        variable = f"WORKER_{str(info.field_name).upper()}"
        try:
            with value.open("rb"):
                pass
        except OSError as error:
            raise ValueError(
                f"{variable}: cannot read {value}: {error.strerror or error}"
            ) from None
        if info.field_name == "amqp_ca_file":
            try:
                ssl.create_default_context(cafile=str(value))
            except ssl.SSLError as error:
                raise ValueError(
                    f"{variable}: {value} is not a PEM CA bundle ({error.reason or error})"
                ) from None
        url = info.data.get("amqp_url")
        if isinstance(url, SecretStr) and not all(
            part.startswith("amqps://") for part in split_urls(url.get_secret_value())
        ):
            raise ValueError(f"{variable} is set, but AMQP_URL does not use amqps://")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("log level must be DEBUG, INFO, WARNING or ERROR")
        return level


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value that must never reach a log line or an error message."""
    found: list[str] = []
    urls = [
        *split_urls(settings.amqp_url.get_secret_value()),
        settings.database_url.get_secret_value(),
    ]
    for url in urls:
        found.extend(url_secrets(url))
    return found
