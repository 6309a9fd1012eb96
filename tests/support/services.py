"""Where the tests find RabbitMQ and PostgreSQL, decided once per run from what answers:

1. a configured URL (`AMQP_URL`, `DATABASE_URL`; `make` sets both to the local services) that
   answers: used as it is;
2. otherwise, where a Docker engine answers: testcontainers starts that service;
3. otherwise: one message saying what was tried, and a non-zero exit - never a silent skip.

`choose` is the rule, a pure function of the probes (tests/unit/test_service_selection.py);
`python -m tests.support.services` prints its verdict, which is how `scripts/ensure-services
--or-docker` (`make test`) lets a machine with only Docker run the suite.

The Docker probe is a plain `GET /_ping` on a socket this module closes: docker-py's own client
leaves its unix socket open when the engine is absent, which `filterwarnings = error` turned
into a 60-line `PytestUnraisableExceptionWarning` after the message.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from worker.addresses import redact_url

DEFAULT_DOCKER_HOST: Final = "unix:///var/run/docker.sock"  # docker-py's, so testcontainers'
PROBE_TIMEOUT: Final = 3.0

# (host, port) of the services this run started in containers: the fault tests, which drive a
# local install with rabbitmqctl / pg_ctlcluster, say why they cannot drive these.
CONTAINER_ENDPOINTS: set[tuple[str, int]] = set()


class ServicesUnavailable(Exception):
    pass


@dataclass(frozen=True)
class Services:
    amqp_url: str
    database_url: str  # postgresql+asyncpg://..., pointing at an admin database


@dataclass(frozen=True)
class Probe:
    variable: str  # AMQP_URL or DATABASE_URL
    url: str | None  # None: not configured
    answers: bool


@dataclass(frozen=True)
class Choice:
    amqp_url: str | None  # None: start RabbitMQ in a container
    database_url: str | None  # None: start PostgreSQL in a container

    @property
    def containers(self) -> list[str]:
        return [
            name
            for name, url in (("RabbitMQ", self.amqp_url), ("PostgreSQL", self.database_url))
            if url is None
        ]


def choose(amqp: Probe, database: Probe, docker_host: str, docker_answers: bool) -> Choice:
    """Each service from its configured URL when that answers, else from a container where a
    Docker engine answers; `ServicesUnavailable` (saying what was tried) when neither."""
    usable = {
        probe.variable: probe.url if probe.url and probe.answers else None
        for probe in (amqp, database)
    }
    choice = Choice(usable[amqp.variable], usable[database.variable])
    if not choice.containers or docker_answers:
        return choice
    tried = "; ".join(
        _account(probe) for probe in (amqp, database) if usable[probe.variable] is None
    )
    raise ServicesUnavailable(
        f"no RabbitMQ/PostgreSQL for the tests: {tried}; and no Docker engine answers at "
        f"{docker_host} for testcontainers to start {' and '.join(choice.containers)}. Start "
        "the local services (`scripts/ensure-services` starts installed ones; or `docker "
        "compose up -d rabbitmq postgres`), point AMQP_URL/DATABASE_URL at running ones, or "
        "start a Docker engine (or set DOCKER_HOST)"
    )


def _account(probe: Probe) -> str:
    if probe.url is None:
        return f"{probe.variable} is not set"
    return f"{probe.variable} ({redact_url(probe.url)}) does not answer"


def docker_host(environ: Mapping[str, str]) -> str:
    """The engine testcontainers would use (docker-py's `from_env`): DOCKER_HOST, else the
    default unix socket."""
    return environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def endpoint(url: str, default_port: int) -> tuple[str, int] | None:
    """(host, port) of a service URL's first node, or None when it cannot be read simply (a
    host list): such a URL is taken at its word."""
    try:
        parts = urlsplit(url.split(",", 1)[0])
        return (parts.hostname or "localhost", parts.port or default_port)
    except ValueError:
        return None


def answers(url: str, default_port: int) -> bool:
    """Whether something accepts a TCP connection where the URL points."""
    found = endpoint(url, default_port)
    if found is None:
        return True
    try:
        with socket.create_connection(found, timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def docker_answers(host: str) -> bool:
    """Whether a Docker engine answers `GET /_ping` at `host` (unix:// or tcp://)."""
    parts = urlsplit(host)
    try:
        if parts.scheme == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(PROBE_TIMEOUT)
                sock.connect(parts.path)
                return _pinged(sock)
        if parts.scheme in ("tcp", "http", "https") and parts.hostname:
            address = (parts.hostname, parts.port or 2375)
            with socket.create_connection(address, timeout=PROBE_TIMEOUT) as sock:
                # A TLS port (DOCKER_TLS_VERIFY) does not speak plain HTTP: accepting is enough.
                return bool(os.environ.get("DOCKER_TLS_VERIFY")) or _pinged(sock)
    except OSError:
        return False
    return False  # ssh:// and other transports: not probed


def _pinged(sock: socket.socket) -> bool:
    sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    return sock.recv(64).startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))


def probe_and_choose(environ: Mapping[str, str]) -> Choice:
    amqp_url, database_url = environ.get("AMQP_URL"), environ.get("DATABASE_URL")
    amqp = Probe("AMQP_URL", amqp_url, bool(amqp_url) and answers(amqp_url or "", 5672))
    database = Probe(
        "DATABASE_URL", database_url, bool(database_url) and answers(database_url or "", 5432)
    )
    host = docker_host(environ)
    needs_docker = not (amqp.answers and database.answers)
    return choose(amqp, database, host, needs_docker and docker_answers(host))


@contextlib.contextmanager
def provide_services() -> Iterator[Services]:
    choice = probe_and_choose(os.environ)
    with contextlib.ExitStack() as stack:
        amqp_url = choice.amqp_url or _start_rabbitmq(stack)
        database_url = choice.database_url or _start_postgres(stack)
        yield Services(amqp_url, database_url)


def started_in_a_container(url: str, default_port: int) -> bool:
    return endpoint(url, default_port) in CONTAINER_ENDPOINTS


def _start_rabbitmq(stack: contextlib.ExitStack) -> str:
    from testcontainers.rabbitmq import RabbitMqContainer

    container: Any = stack.enter_context(RabbitMqContainer("rabbitmq:3.10-management"))
    host, port = container.get_container_host_ip(), int(container.get_exposed_port(5672))
    CONTAINER_ENDPOINTS.add((host, port))
    return f"amqp://guest:guest@{host}:{port}/"


def _start_postgres(stack: contextlib.ExitStack) -> str:
    from testcontainers.postgres import PostgresContainer

    container: Any = stack.enter_context(PostgresContainer("postgres:15", driver="asyncpg"))
    url = str(container.get_connection_url())
    found = endpoint(url, 5432)
    if found is not None:
        CONTAINER_ENDPOINTS.add(found)
    return url


def main() -> int:
    """The verdict for `scripts/ensure-services --or-docker`: exit 0 when the tests will find
    their services (saying where), 1 with the reason when they will not."""
    try:
        choice = probe_and_choose(os.environ)
    except ServicesUnavailable as error:
        print(f"ensure-services: {error}", file=sys.stderr)  # noqa: T201 - a script's output
        return 1
    if choice.containers:
        print(  # noqa: T201 - a script's output
            f"ensure-services: a Docker engine answers at {docker_host(os.environ)}: the tests "
            f"will start {' and '.join(choice.containers)} with testcontainers",
            file=sys.stderr,
        )
    else:
        print("ensure-services: the tests will use AMQP_URL and DATABASE_URL")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
