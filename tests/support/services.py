"""Where the tests find RabbitMQ and PostgreSQL.

1. `AMQP_URL` / `DATABASE_URL` when set (CI and the README's test command set them);
2. otherwise testcontainers, where a Docker engine answers;
3. otherwise a clear failure - never a silent skip.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class ServicesUnavailable(Exception):
    pass


@dataclass(frozen=True)
class Services:
    amqp_url: str
    database_url: str  # postgresql+asyncpg://..., pointing at an admin database


def _docker_answers() -> bool:
    import docker

    try:
        client = docker.from_env(timeout=3)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def provide_services() -> Iterator[Services]:
    amqp_url, database_url = os.environ.get("AMQP_URL"), os.environ.get("DATABASE_URL")
    if amqp_url and database_url:
        yield Services(amqp_url, database_url)
        return
    if not _docker_answers():
        raise ServicesUnavailable(
            "no RabbitMQ/PostgreSQL for the tests: set AMQP_URL and DATABASE_URL "
            "(e.g. `make test`, which points them at the local services), or run where a "
            "Docker engine answers so that testcontainers can start them"
        )
    with contextlib.ExitStack() as stack:
        amqp_url = amqp_url or _start_rabbitmq(stack)
        database_url = database_url or _start_postgres(stack)
        yield Services(amqp_url, database_url)


def _start_rabbitmq(stack: contextlib.ExitStack) -> str:
    from testcontainers.rabbitmq import RabbitMqContainer

    container: Any = stack.enter_context(RabbitMqContainer("rabbitmq:3.10-management"))
    host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
    return f"amqp://guest:guest@{host}:{port}/"


def _start_postgres(stack: contextlib.ExitStack) -> str:
    from testcontainers.postgres import PostgresContainer

    container: Any = stack.enter_context(PostgresContainer("postgres:15", driver="asyncpg"))
    return str(container.get_connection_url())
