"""All configuration, read once from the environment in `main` and passed down."""

from __future__ import annotations

import ssl
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote

from pydantic import AmqpDsn, Field, PostgresDsn, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL


class LogFormat(StrEnum):
    AUTO = "auto"  # JSON lines off a terminal, readable on one
    JSON = "json"
    CONSOLE = "console"


class QueueType(StrEnum):
    QUORUM = "quorum"
    CLASSIC = "classic"


class Settings(BaseSettings):
    """Environment variables `WORKER_*`, plus the two service URLs `AMQP_URL` and `DATABASE_URL`."""

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

    # The four defaults below come from the benchmark: README, "How the defaults were chosen".
    prefetch: Annotated[int, Field(ge=1, le=10_000)] = 500
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 250
    concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    db_pool_size: Annotated[int, Field(ge=1, le=100)] = 3
    publish_timeout: Annotated[float, Field(gt=0, le=300)] = 30.0
    grace_period: Annotated[float, Field(gt=0, le=3600)] = 25.0
    retry_max_backoff: Annotated[float, Field(gt=0, le=60)] = 5.0
    uvloop: bool = Field(default=True, description="uvloop's event loop, where it exists (Linux)")

    log_format: LogFormat = LogFormat.AUTO
    log_level: str = "INFO"
    health_file: Path | None = Field(
        default=None, description="touched every few seconds while the worker consumes"
    )

    # Fault injection for the fault-test suite (worker/testing/faults.py), wired only by the
    # composition root (worker/entrypoints/run.py). Never set in production.
    fault_plan: str = ""

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: SecretStr) -> SecretStr:
        AmqpDsn(value.get_secret_value())  # raises a ValidationError naming the field
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: SecretStr) -> SecretStr:
        url = PostgresDsn(value.get_secret_value())
        if url.scheme != "postgresql+asyncpg":
            raise ValueError("DATABASE_URL must use the postgresql+asyncpg:// scheme")
        return value

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
        if isinstance(url, SecretStr) and not url.get_secret_value().startswith("amqps://"):
            raise ValueError(f"{variable} is set, but AMQP_URL does not use amqps://")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("log level must be DEBUG, INFO, WARNING or ERROR")
        return level


def _parsed(url: str) -> URL | None:
    """The URL as yarl reads it (as aiormq does AMQP_URL), or None if it is not an absolute
    URL with a host."""
    try:
        parsed = URL(url)
        return parsed if parsed.absolute and parsed.scheme else None
    except (ValueError, TypeError):
        return None


def _is_password_parameter(name: str) -> bool:
    # libpq and asyncpg also take the password as a query parameter (`?password=...`).
    return "password" in name.lower()


def redact_url(url: str) -> str:
    """`scheme://user:***@host:port/path`: where a URL points, without its password."""
    parsed = _parsed(url)
    if parsed is None:
        return "***"
    if parsed.password is not None:
        parsed = parsed.with_password("***")
    if any(_is_password_parameter(name) for name in parsed.query):
        parsed = parsed.with_query(
            [
                (name, "***" if _is_password_parameter(name) else value)
                for name, value in parsed.query.items()
            ]
        )
    # An '@' that yarl did not take for the end of the credentials: a password with '/', '?'
    # or '#' written unencoded ends the authority early, and may show in the path.
    if parsed.raw_user is None and parsed.raw_password is None and "@" in url:
        return "***"
    return str(parsed)


def url_password(url: str) -> str | None:
    """The password embedded in a URL, so that logs can scrub it wherever it turns up."""
    parsed = _parsed(url)
    return (parsed.password or None) if parsed is not None else None


def _url_secrets(url: str) -> list[str]:
    """The URL's password and its password parameters, each decoded and as written."""
    parsed = _parsed(url)
    if parsed is None:
        return []
    found = [parsed.password or "", parsed.raw_password or ""]
    for pair in parsed.raw_query_string.split("&"):
        name, _, raw = pair.partition("=")
        if _is_password_parameter(unquote(name)):
            found += [raw, unquote(raw)]
    return list(dict.fromkeys(secret for secret in found if secret))


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value that must never reach a log line or an error message."""
    found: list[str] = []
    for url in (settings.amqp_url, settings.database_url):
        found.extend(_url_secrets(url.get_secret_value()))
    return found
