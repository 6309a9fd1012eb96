"""Several nodes in one setting: broker URL lists and PostgreSQL host lists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from worker.addresses import (
    MAX_ADDRESSES,
    AddressError,
    postgres_hosts_in_query,
    redact_url,
    split_amqp_urls,
)
from worker.entrypoints import cli
from worker.settings import Settings, secrets_of

THREE_NODES = (
    "amqp://app:s3cret@mq1:5672/coupons,amqp://app:s3cret@mq2:5672/coupons,"
    "amqp://app:0ther%2Cpw@mq3:5673/coupons"
)
TWO_HOSTS = (
    "postgresql+asyncpg://app:dbs3cret@db1:5432,db2:5433/coupons?target_session_attrs=read-write"
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WORKER_") or name in ("AMQP_URL", "DATABASE_URL"):
            monkeypatch.delenv(name)


def test_one_url_is_a_list_of_one() -> None:
    assert split_amqp_urls("amqp://guest:guest@localhost:5672/") == [
        "amqp://guest:guest@localhost:5672/"
    ]


def test_several_urls_in_order_with_spaces_allowed() -> None:
    assert split_amqp_urls("amqp://a@h1/, amqp://b@h2/ ,amqp://c@h3/") == [
        "amqp://a@h1/",
        "amqp://b@h2/",
        "amqp://c@h3/",
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("amqp://u:p@h1/,,amqp://u:p@h2/", "empty entry"),
        ("amqp://u:p@h1/,", "empty entry"),
        ("amqp://u:p@h1/, ", "empty entry"),
        ("amqp://u:p@h1/,http://u:pa,ss@h2/", "entry 2 of 2 does not start with amqp://"),
        ("amqps://u:p@h1/,amqp://u:p@h2/", "mixes amqp:// and amqps://"),
        (",".join(["amqp://h/"] * (MAX_ADDRESSES + 1)), f"at most {MAX_ADDRESSES}"),
    ],
)
def test_unreadable_lists_are_refused_without_the_password(value: str, message: str) -> None:
    with pytest.raises(AddressError, match=message) as raised:
        split_amqp_urls(value)
    assert "pa,ss" not in str(raised.value) and ":p@" not in str(raised.value)


def test_a_comma_in_a_password_stays_in_its_url() -> None:
    """Only a comma followed by a scheme starts the next address."""
    assert split_amqp_urls("amqp://u:pa,ss@h1/,amqp://u:p@h2/") == [
        "amqp://u:pa,ss@h1/",
        "amqp://u:p@h2/",
    ]


def test_settings_keep_every_broker_and_hide_every_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AMQP_URL", THREE_NODES)
    settings = Settings()
    assert settings.amqp_urls() == THREE_NODES.split(",")
    assert "s3cret" not in repr(settings) and "0ther" not in str(settings.model_dump())
    assert redact_url(settings.amqp_url.get_secret_value()) == (
        "amqp://app:***@mq1:5672/coupons,amqp://app:***@mq2:5672/coupons,"
        "amqp://app:***@mq3:5673/coupons"
    )
    secrets = secrets_of(settings)
    assert {"s3cret", "0ther,pw", "0ther%2Cpw"} <= set(secrets)


def test_a_bad_entry_is_reported_by_the_cli_without_passwords(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://app:s3cret@mq1/,amqps://app:s3cret@mq2/")
    # Never reached (the configuration is refused first), but harmless if it were.
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    with pytest.raises(SystemExit) as exited:
        cli.main(["migrate"])
    assert exited.value.code == cli.EXIT_USAGE
    error = capsys.readouterr().err
    assert "AMQP_URL" in error and "mixes amqp:// and amqps://" in error
    assert "s3cret" not in error


def test_tls_files_need_every_broker_on_amqps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    certificate = tmp_path / "client.pem"
    certificate.write_text("read, not parsed, by the settings")
    monkeypatch.setenv("WORKER_AMQP_CLIENT_CERT", str(certificate))
    monkeypatch.setenv("AMQP_URL", "amqps://u:p@h1:5671/,amqps://u:p@h2:5671/")
    assert len(Settings().amqp_urls()) == 2
    monkeypatch.setenv("AMQP_URL", "amqp://u:p@h1:5672/,amqp://u:p@h2:5672/")
    with pytest.raises(ValidationError, match="does not use amqps://"):
        Settings()


def test_libpq_host_list_becomes_sqlalchemys_multihost_form() -> None:
    converted = postgres_hosts_in_query(TWO_HOSTS)
    assert converted == (
        "postgresql+asyncpg://app:dbs3cret@/coupons"
        "?host=db1:5432&host=db2:5433&target_session_attrs=read-write"
    )
    url = make_url(converted)
    engine = create_async_engine(url)
    _, arguments = engine.dialect.create_connect_args(url)
    assert arguments["host"] == ["db1", "db2"]
    assert arguments["port"] == [5432, 5433]
    assert arguments["target_session_attrs"] == "read-write"
    assert arguments["password"] == "dbs3cret"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://app@db1:5432/coupons",
        "postgresql+asyncpg://app@/coupons?host=db1:5432&host=db2:5433",
    ],
)
def test_other_database_urls_are_left_alone(url: str) -> None:
    assert postgres_hosts_in_query(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+asyncpg://app@db1:5432,,db2:5433/coupons", "empty host"),
        ("postgresql+asyncpg://app@db1,db2/coupons?host=db3", "both before the path and in"),
    ],
)
def test_unreadable_host_lists_are_refused(url: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        postgres_hosts_in_query(url)


@pytest.mark.parametrize(
    "value",
    [
        TWO_HOSTS,
        "postgresql+asyncpg://app:dbs3cret@/coupons?host=db1:5432&host=db2:5433"
        "&target_session_attrs=read-write",
    ],
    ids=["libpq-form", "sqlalchemy-form"],
)
def test_settings_accept_both_multihost_forms_and_redact_them(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", value)
    settings = Settings()
    stored = settings.database_url.get_secret_value()
    assert make_url(stored).query["host"] == ("db1:5432", "db2:5433")
    assert redact_url(stored) == (
        "postgresql+asyncpg://app:***@/coupons"
        "?host=db1:5432&host=db2:5433&target_session_attrs=read-write"
    )
    assert "dbs3cret" in secrets_of(settings)


def test_a_multihost_database_url_keeps_the_scheme_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db1:5432,db2:5433/coupons")
    with pytest.raises(ValidationError, match="postgresql\\+asyncpg"):
        Settings()
