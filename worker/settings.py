"""All configuration, read once from the environment in `main` and passed down."""

from __future__ import annotations

import re
import ssl
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final
from urllib.parse import unquote

from pydantic import AmqpDsn, Field, PostgresDsn, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.addresses import AddressError, postgres_hosts_in_query, split_amqp_urls, split_urls


class LogFormat(StrEnum):
    AUTO = "auto"  # JSON lines off a terminal, readable on one
    JSON = "json"
    CONSOLE = "console"


class QueueType(StrEnum):
    QUORUM = "quorum"
    CLASSIC = "classic"


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
    )
    database_url: SecretStr = Field(
        default=SecretStr("postgresql+asyncpg://postgres@localhost:5432/postgres"),
        validation_alias="DATABASE_URL",
    )
    amqp_ca_file: Path | None = Field(
        default=None, description="CA bundle to verify the broker's certificate with amqps://"
    )
    amqp_client_cert: Path | None = None
    amqp_client_key: Path | None = None

    name_prefix: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")] = ""
    declare_topology: bool = True
    queue_type: QueueType = QueueType.QUORUM
    delivery_limit: Annotated[int, Field(ge=1, le=1000)] = 20
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 5

    prefetch: Annotated[int, Field(ge=1, le=10_000)] = 256
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 100
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    db_pool_size: Annotated[int, Field(ge=1, le=100)] = 5
    publish_timeout: Annotated[float, Field(gt=0, le=300)] = 30.0
    grace_period: Annotated[float, Field(gt=0, le=3600)] = 25.0
    retry_max_backoff: Annotated[float, Field(gt=0, le=60)] = 5.0

    log_format: LogFormat = LogFormat.AUTO
    log_level: str = "INFO"
    health_file: Path | None = Field(
        default=None, description="touched every few seconds while the worker consumes"
    )

    # Fault injection for the fault-test suite; see worker/faults.py. Never set in production.
    fault_plan: str = ""

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: SecretStr) -> SecretStr:
        urls = split_amqp_urls(value.get_secret_value())  # an AddressError is a ValueError
        for url in urls:
            AmqpDsn(url)  # raises a ValidationError naming the field
        return SecretStr(",".join(urls))

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if raw.partition("://")[0] != "postgresql+asyncpg":
            raise ValueError("DATABASE_URL must use the postgresql+asyncpg:// scheme")
        if "?" in raw and any(
            part.startswith("host=") for part in raw.partition("?")[2].split("&")
        ):
            # SQLAlchemy's multi-host form has no host before the path, which PostgresDsn
            # refuses; SQLAlchemy's own parser checks it.
            from sqlalchemy.engine import make_url

            try:
                make_url(raw)
            except ValueError:
                raise AddressError("DATABASE_URL is not a valid multi-host URL") from None
            return value
        PostgresDsn(raw)  # also reads libpq's host list `@h1:5432,h2:5433/`
        return SecretStr(postgres_hosts_in_query(raw))

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


# libpq and asyncpg also take the password as a query parameter (`?password=...`).
_QUERY_PASSWORD: Final = re.compile(r"([?&][^=&#]*password[^=&#]*=)([^&#]*)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`scheme://user:***@host:port/path`: where a URL points, without its password. A
    comma-separated list of URLs gives the list of their redactions."""
    urls = split_urls(url)
    if len(urls) > 1:
        return ",".join(_redact_one(part) for part in urls)
    return _redact_one(url)


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    rest = _QUERY_PASSWORD.sub(r"\1***", rest)
    credentials, at, location = rest.rpartition("@")
    if not at:
        return f"{scheme}://{rest}"
    user = credentials.split(":", 1)[0]
    return (
        f"{scheme}://{user}:***@{location}"
        if ":" in credentials
        else f"{scheme}://{user}@{location}"
    )


def url_password(url: str) -> str | None:
    """The password embedded in a URL, so that logs can scrub it wherever it turns up."""
    _, _, rest = url.partition("://")
    credentials, at, _ = rest.rpartition("@")
    if not at or ":" not in credentials:
        return None
    password = credentials.split(":", 1)[1]
    return unquote(password) or None


def _query_passwords(url: str) -> list[str]:
    found: list[str] = []
    for match in _QUERY_PASSWORD.finditer(url):
        raw = match.group(2)
        found.extend(value for value in {raw, unquote(raw)} if value)
    return found


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value that must never reach a log line or an error message."""
    found: list[str] = []
    urls = [
        *split_urls(settings.amqp_url.get_secret_value()),
        settings.database_url.get_secret_value(),
    ]
    for raw in urls:
        password = url_password(raw)
        if password:
            found.append(password)
            encoded = raw.partition("://")[2].rpartition("@")[0].split(":", 1)[1]
            if encoded != password:
                found.append(encoded)
        found.extend(_query_passwords(raw))
    return found
