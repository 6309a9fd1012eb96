"""Bounds on silent peers: the heartbeat's precedence, keepalive options, what a timeout means."""

from __future__ import annotations

import importlib
import os
import socket

import aiormq
import pytest
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc

from worker.addresses import url_heartbeat
from worker.app.failures import DependencyUnavailable
from worker.db.transience import transient_kind
from worker.entrypoints.environment import describe_settings_error
from worker.keepalive import TcpKeepalive
from worker.messaging.retry import batch_deadline
from worker.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WORKER_") or name in ("AMQP_URL", "DATABASE_URL"):
            monkeypatch.delenv(name)


def test_defaults_detect_a_silent_broker_within_about_fifteen_seconds() -> None:
    settings = Settings()
    assert settings.broker_heartbeat == 4
    assert 3 * (settings.broker_heartbeat + 1) <= 15  # aiormq: three missed heartbeats
    assert settings.broker_url() == "amqp://guest:guest@localhost:5672/?heartbeat=4"
    assert (settings.amqp_connect_timeout, settings.db_connect_timeout) == (5.0, 5.0)
    assert settings.db_statement_timeout == 5.0
    assert settings.tcp_keepalive == 10


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://u:p@mq:5672/vh", "amqp://u:p@mq:5672/vh?heartbeat=7"),
        ("amqp://u:p@mq:5672/vh?", "amqp://u:p@mq:5672/vh?heartbeat=7"),
        ("amqp://u:p@mq:5672/?name=w", "amqp://u:p@mq:5672/?name=w&heartbeat=7"),
        ("amqp://u:p@mq:5672/?name=w&", "amqp://u:p@mq:5672/?name=w&heartbeat=7"),
    ],
)
def test_the_setting_is_added_to_a_url_without_a_heartbeat(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    monkeypatch.setenv("AMQP_URL", url)
    monkeypatch.setenv("WORKER_AMQP_HEARTBEAT", "7")
    settings = Settings()
    assert settings.broker_url() == expected
    assert settings.broker_heartbeat == 7


def test_the_urls_heartbeat_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://u:p@mq:5672/?heartbeat=30")
    settings = Settings()
    assert settings.broker_heartbeat == 30
    assert settings.broker_url() == "amqp://u:p@mq:5672/?heartbeat=30"


def test_the_same_heartbeat_in_both_places_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://u:p@mq:5672/?heartbeat=6")
    monkeypatch.setenv("WORKER_AMQP_HEARTBEAT", "6")
    assert Settings().broker_heartbeat == 6


def test_two_different_heartbeats_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://u:secret@mq:5672/?heartbeat=60")
    monkeypatch.setenv("WORKER_AMQP_HEARTBEAT", "4")
    with pytest.raises(ValidationError) as raised:
        Settings()
    message = describe_settings_error(raised.value)  # what the operator sees
    assert "WORKER_AMQP_HEARTBEAT=4 disagrees with heartbeat=60" in message
    assert "secret" not in message


@pytest.mark.parametrize("query", ["heartbeat=soon", "heartbeat=-1", "heartbeat=601"])
def test_a_bad_heartbeat_in_the_url_is_refused(monkeypatch: pytest.MonkeyPatch, query: str) -> None:
    monkeypatch.setenv("AMQP_URL", f"amqp://u:secret@mq:5672/?{query}")
    with pytest.raises(ValidationError) as raised:
        Settings()
    message = describe_settings_error(raised.value)
    assert "AMQP_URL: " in message and "heartbeat" in message and "secret" not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WORKER_AMQP_HEARTBEAT", "601"),
        ("WORKER_AMQP_CONNECT_TIMEOUT", "0"),
        ("WORKER_DB_CONNECT_TIMEOUT", "121"),
        ("WORKER_DB_STATEMENT_TIMEOUT", "0"),
        ("WORKER_TCP_KEEPALIVE", "-1"),
    ],
)
def test_out_of_bounds_timeouts_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        Settings()


async def test_aiormq_reads_the_heartbeat_from_the_url() -> None:
    connection = aiormq.Connection(Settings().broker_url())
    assert connection.heartbeat_timeout == 4
    assert url_heartbeat("amqp://h/") is None


def test_keepalive_options_on_a_tcp_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        TcpKeepalive(10).apply(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 25_000
    assert TcpKeepalive(10).gives_up_after == 25


def test_keepalive_off_and_unix_sockets_are_left_alone() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        TcpKeepalive(0).apply(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        TcpKeepalive(10).apply(sock)  # no TCP options on a Unix socket, and no error
    assert TcpKeepalive(0).postgres_server_settings() == {}
    assert TcpKeepalive(1).interval == 1
    assert TcpKeepalive(10).postgres_server_settings() == {
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
    }


def test_timeouts_and_asyncpg_connection_errors_are_outages() -> None:
    # What a silent database raises: a statement or connect timeout (asyncpg, unwrapped by
    # SQLAlchemy), the batch deadline, and asyncpg's errors for a connection that is gone.
    assert transient_kind(TimeoutError()) is DependencyUnavailable
    assert transient_kind(OSError("No route to host")) is DependencyUnavailable
    asyncpg = importlib.import_module("asyncpg")
    for gone in (
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
    ):
        wrapped = sa_exc.DBAPIError("SELECT 1", None, gone)
        wrapped.orig = Exception("translated")
        wrapped.orig.__cause__ = gone
        wrapped.__cause__ = wrapped.orig  # SQLAlchemy raises its error from the dialect's
        assert transient_kind(wrapped) is DependencyUnavailable, gone
        closed = sa_exc.InterfaceError("SELECT 1", None, gone)
        assert transient_kind(closed) is DependencyUnavailable


def test_the_batch_deadline_grows_with_the_batch() -> None:
    assert batch_deadline(1, 5.0) == pytest.approx(10.05)
    assert batch_deadline(100, 5.0) == pytest.approx(15.0)
    assert batch_deadline(1000, 5.0) > batch_deadline(100, 5.0) > 2 * 5.0
