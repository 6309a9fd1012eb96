"""Settings from the environment: local defaults, bounds, and secrets that never show."""

from __future__ import annotations

import os
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from worker.addresses import redact_url, url_password
from worker.entrypoints import cli
from worker.settings import LogFormat, QueueType, Settings, secrets_of


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WORKER_") or name in ("AMQP_URL", "DATABASE_URL"):
            monkeypatch.delenv(name)


def test_defaults_point_at_the_local_services() -> None:
    settings = Settings()
    assert settings.amqp_url.get_secret_value() == "amqp://guest:guest@localhost:5672/"
    assert (
        settings.database_url.get_secret_value()
        == "postgresql+asyncpg://postgres@localhost:5432/postgres"
    )
    assert settings.name_prefix == ""
    assert settings.declare_topology is True
    assert settings.queue_type is QueueType.QUORUM
    assert settings.prefetch >= settings.batch_size >= 1
    assert settings.fault_plan == ""


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://app:pw@mq.example:5673/coupons")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app:pw@db.example:6432/coupons")
    monkeypatch.setenv("WORKER_PREFETCH", "17")
    monkeypatch.setenv("WORKER_BATCH_SIZE", "9")
    monkeypatch.setenv("WORKER_CONCURRENCY", "3")
    monkeypatch.setenv("WORKER_NAME_PREFIX", "tenant-a.")
    monkeypatch.setenv("WORKER_DECLARE_TOPOLOGY", "false")
    monkeypatch.setenv("WORKER_QUEUE_TYPE", "classic")
    monkeypatch.setenv("WORKER_LOG_FORMAT", "json")
    monkeypatch.setenv("WORKER_LOG_LEVEL", "debug")
    monkeypatch.setenv("WORKER_GRACE_PERIOD", "2.5")
    settings = Settings()
    assert settings.amqp_url.get_secret_value() == "amqp://app:pw@mq.example:5673/coupons"
    assert settings.database_url.get_secret_value().endswith("@db.example:6432/coupons")
    assert (settings.prefetch, settings.batch_size, settings.concurrency) == (17, 9, 3)
    assert settings.name_prefix == "tenant-a."
    assert settings.declare_topology is False
    assert settings.queue_type is QueueType.CLASSIC
    assert settings.log_format is LogFormat.JSON
    assert settings.log_level == "DEBUG"
    assert settings.grace_period == 2.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_PREFETCH", "0"),
        ("WORKER_PREFETCH", "10001"),
        ("WORKER_PREFETCH", "many"),
        ("WORKER_BATCH_SIZE", "0"),
        ("WORKER_CONCURRENCY", "0"),
        ("WORKER_CONCURRENCY", "65"),
        ("WORKER_DB_POOL_SIZE", "0"),
        ("WORKER_DELIVERY_LIMIT", "0"),
        ("WORKER_MAX_ATTEMPTS", "0"),
        ("WORKER_GRACE_PERIOD", "0"),
        ("WORKER_GRACE_PERIOD", "-1"),
        ("WORKER_PUBLISH_TIMEOUT", "0"),
        ("WORKER_RETRY_MAX_BACKOFF", "61"),
        ("WORKER_NAME_PREFIX", "has space"),
        ("WORKER_NAME_PREFIX", "p" * 65),
        ("WORKER_QUEUE_TYPE", "stream"),
        ("WORKER_LOG_FORMAT", "xml"),
        ("WORKER_LOG_LEVEL", "verbose"),
        ("AMQP_URL", "http://guest:guest@localhost:5672/"),
        ("AMQP_URL", "not a url"),
        ("DATABASE_URL", "postgresql://postgres@localhost:5432/postgres"),
        ("DATABASE_URL", "mysql+asyncmy://root@localhost/db"),
    ],
)
def test_out_of_bounds_values_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_never_show_the_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://app:rabbit-pw-123@mq:5672/")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app:pg-pw-456@db:5432/coupons")
    settings = Settings()
    for shown in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
    ):
        assert "rabbit-pw-123" not in shown
        assert "pg-pw-456" not in shown
    assert sorted(secrets_of(settings)) == ["pg-pw-456", "rabbit-pw-123"]


def test_invalid_configuration_is_reported_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pg-pw-789@db:5432/coupons")
    monkeypatch.setenv("WORKER_PREFETCH", "0")
    with pytest.raises(SystemExit) as exited:
        cli.main(["run"])
    assert exited.value.code == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert "pg-pw-789" not in captured.err + captured.out
    assert "DATABASE_URL" in captured.err
    assert "PREFETCH" in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        ("amqps://app:s3cret@mq.example:5671/vhost", "amqps://app:***@mq.example:5671/vhost"),
        ("postgresql+asyncpg://u:p%40ss@db:5432/x", "postgresql+asyncpg://u:***@db:5432/x"),
        ("postgresql+asyncpg://u:p@ss:w@rd@db:5432/x", "postgresql+asyncpg://u:***@db:5432/x"),
        ("postgresql+asyncpg://postgres@localhost:5432/postgres", None),
        ("amqp://localhost/", None),
        ("amqp://:only-pw@localhost/", "amqp://:***@localhost/"),
        ("not a url with a s3cret", "***"),
        (
            "postgresql+asyncpg://u@db:5432/x?password=q-s3cret&ssl=require",
            "postgresql+asyncpg://u@db:5432/x?password=***&ssl=require",
        ),
        (
            "postgresql+asyncpg://db/x?ssl=require&PASSWORD=q-s3cret",
            "postgresql+asyncpg://db/x?ssl=require&PASSWORD=***",
        ),
        ("amqp://u:pw@mq/vhost?sslpassword=k-s3cret", "amqp://u:***@mq/vhost?sslpassword=***"),
    ],
)
def test_redact_url(url: str, redacted: str | None) -> None:
    assert redact_url(url) == (url if redacted is None else redacted)


def test_url_password() -> None:
    assert url_password("amqp://u:p%40ss@h/") == "p@ss"
    assert url_password("amqp://u:pw@h/") == "pw"
    assert url_password("amqp://u@h/") is None
    assert url_password("amqp://u:@h/") is None
    assert url_password("amqp://h/") is None


def test_secrets_of_includes_the_percent_encoded_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://app:p%40ss%3Aword@mq:5672/")
    assert set(secrets_of(Settings())) == {"p@ss:word", "p%40ss%3Aword"}


def test_secrets_of_includes_a_password_given_as_a_query_parameter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://mq:5672/")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app@db/x?password=q%26pw&ssl=require")
    assert set(secrets_of(Settings())) == {"q&pw", "q%26pw"}


@given(
    password=st.text(min_size=1, max_size=30).map(lambda text: f"Pw{text}"),
    scheme=st.sampled_from(["amqp", "amqps", "postgresql+asyncpg"]),
    user=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    host=st.sampled_from(["localhost", "127.0.0.1", "db.example.com", "[::1]"]),
)
def test_redact_url_never_reveals_a_password(
    password: str, scheme: str, user: str, host: str
) -> None:
    encoded = quote(password, safe="")
    for credentials in (f"{user}:{encoded}", f"{user}:{password}"):
        url = f"{scheme}://{credentials}@{host}:5432/db"
        shown = redact_url(url)
        assert password not in shown
        assert encoded not in shown
        assert "***" in shown
    assert url_password(f"{scheme}://{user}:{encoded}@{host}:5432/db") == password
