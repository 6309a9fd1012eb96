"""Where the tests find their services (tests/support/services.py): configured URLs that answer,
else testcontainers where a Docker engine answers, else one message and a non-zero exit.

This machine has no Docker engine: the rule is checked as a pure function of the probes, the
Docker probe against a stand-in engine on a unix socket, and the 'neither' case end to end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import (
    DEFAULT_DOCKER_HOST,
    Choice,
    Probe,
    ServicesUnavailable,
    choose,
    docker_answers,
    docker_host,
    endpoint,
)

AMQP = "amqp://guest:s3cret@127.0.0.1:5672/"
DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
NOWHERE = {
    "AMQP_URL": "amqp://guest:s3cret@127.0.0.1:1/",
    "DATABASE_URL": DATABASE.replace("5432", "1"),
}
ROOT = Path(__file__).parents[2]


def amqp(url: str | None = AMQP, answers: bool = True) -> Probe:
    return Probe("AMQP_URL", url, answers)


def database(url: str | None = DATABASE, answers: bool = True) -> Probe:
    return Probe("DATABASE_URL", url, answers)


@pytest.mark.parametrize("docker", [True, False])
def test_configured_services_that_answer_are_used_whatever_docker_says(docker: bool) -> None:
    assert choose(amqp(), database(), DEFAULT_DOCKER_HOST, docker) == Choice(AMQP, DATABASE)
    assert Choice(AMQP, DATABASE).containers == []


@pytest.mark.parametrize(
    ("rabbit", "postgres", "containers"),
    [
        (amqp(answers=False), database(answers=False), ["RabbitMQ", "PostgreSQL"]),
        (amqp(None, False), database(None, False), ["RabbitMQ", "PostgreSQL"]),
        (amqp(), database(answers=False), ["PostgreSQL"]),
        (amqp(None, False), database(), ["RabbitMQ"]),
    ],
)
def test_what_does_not_answer_comes_from_containers_where_docker_answers(
    rabbit: Probe, postgres: Probe, containers: list[str]
) -> None:
    choice = choose(rabbit, postgres, DEFAULT_DOCKER_HOST, docker_answers=True)
    assert choice.containers == containers
    assert choice.amqp_url == (AMQP if "RabbitMQ" not in containers else None)
    assert choice.database_url == (DATABASE if "PostgreSQL" not in containers else None)


def test_neither_is_one_message_saying_what_was_tried() -> None:
    with pytest.raises(ServicesUnavailable) as raised:
        choose(amqp(answers=False), database(None, False), "unix:///x.sock", docker_answers=False)
    message = str(raised.value)
    assert "AMQP_URL (amqp://guest:***@127.0.0.1:5672/) does not answer" in message
    assert "DATABASE_URL is not set" in message
    assert "no Docker engine answers at unix:///x.sock" in message
    assert "start RabbitMQ and PostgreSQL" in message
    assert "s3cret" not in message and "\n" not in message


def test_the_docker_host_is_the_one_testcontainers_would_use() -> None:
    assert docker_host({}) == "unix:///var/run/docker.sock"
    assert docker_host({"DOCKER_HOST": "tcp://10.0.0.2:2375"}) == "tcp://10.0.0.2:2375"


def test_endpoints_of_service_urls() -> None:
    assert endpoint(AMQP, 5672) == ("127.0.0.1", 5672)
    assert endpoint("amqp://g:g@mq/", 5672) == ("mq", 5672)
    assert endpoint("amqp://a:1/,amqp://b:2/", 5672) == ("a", 1)
    assert endpoint(DATABASE, 5432) == ("127.0.0.1", 5432)


@pytest.fixture
def engine_socket(tmp_path: Path) -> Iterator[Path]:
    """A stand-in Docker engine: answers `GET /_ping` with 200 OK on a unix socket."""
    path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.recv(1024)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(5)


def test_docker_probe_answers_and_leaves_no_socket_open(engine_socket: Path) -> None:
    # filterwarnings = error: a socket left open would fail this test (ResourceWarning).
    assert docker_answers(f"unix://{engine_socket}") is True
    assert docker_answers(f"unix://{engine_socket.with_name('absent.sock')}") is False
    assert docker_answers("tcp://127.0.0.1:1") is False
    assert docker_answers("ssh://someone@somewhere") is False


def verdict(**env: str) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k not in ("AMQP_URL", "DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "tests.support.services"],
        env={**inherited, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ensure_services_verdict_with_docker(engine_socket: Path) -> None:
    done = verdict(**NOWHERE, DOCKER_HOST=f"unix://{engine_socket}")
    assert done.returncode == 0, done.stderr
    assert "will start RabbitMQ and PostgreSQL with testcontainers" in done.stderr


def test_ensure_services_verdict_with_neither(tmp_path: Path) -> None:
    done = verdict(**NOWHERE, DOCKER_HOST=f"unix://{tmp_path}/absent.sock")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("ensure-services: no RabbitMQ/PostgreSQL for the tests: ")


def test_pytest_without_services_or_docker_says_so_once(tmp_path: Path) -> None:
    """Never a silent skip, never a traceback (it was a leaked Docker client socket meeting
    `filterwarnings = error`: ~60 lines after the message)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "tests/integration/test_cli_startup.py::test_run_refuses_an_unmigrated_database",
        ],
        env={**inherited, **NOWHERE, "DOCKER_HOST": f"unix://{tmp_path}/absent.sock"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert output.count("no RabbitMQ/PostgreSQL for the tests") == 1, output
    assert "Traceback" not in output and "Unraisable" not in output, output
    assert "skipped" not in output
