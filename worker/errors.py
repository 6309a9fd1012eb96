"""Expected start-up faults, said so that a person can act on them (no traceback)."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from typing import Final, Literal

from worker.db.schema import SchemaMismatch
from worker.messaging.topology import TopologyError
from worker.settings import Settings, redact_url


class StartupError(Exception):
    """An expected fault with a message for the operator; the CLI prints it and exits 2."""


def describe_startup_failure(
    error: BaseException, settings: Settings, service: Literal["broker", "database"]
) -> BaseException:
    """A `StartupError` naming the service, where it is, and how to start it; or `error`
    itself when it is not an expected fault (a bug keeps its traceback)."""
    if isinstance(error, StartupError | SchemaMismatch | TopologyError):
        return StartupError(str(error))
    name, text = type(error).__name__, str(error)
    if service == "broker":
        where = redact_url(settings.amqp_url.get_secret_value())
        if "ProbableAuthentication" in name or "ACCESS_REFUSED" in text:
            return StartupError(
                f"RabbitMQ at {where} refused the credentials or the virtual host ({name}); "
                "check AMQP_URL"
            )
        tls_failure = _tls_failure(error)
        if tls_failure is not None:
            return StartupError(
                f"the TLS handshake with RabbitMQ at {where} failed ({tls_failure}): check "
                "that this port has a TLS listener, and that WORKER_AMQP_CA_FILE holds the CA "
                "that signed the broker's certificate"
            )
        if _is_connection_fault(error):
            return StartupError(
                f"cannot reach RabbitMQ at {where} ({name}): start it "
                "(`rabbitmq-server -detached`, or `docker compose up -d rabbitmq`) "
                "or set AMQP_URL"
            )
        return error
    where = redact_url(settings.database_url.get_secret_value())
    if "InvalidCatalogName" in name or ("database" in text and "does not exist" in text):
        return StartupError(
            f"the database named in DATABASE_URL ({where}) does not exist: create it "
            "(`createdb -h HOST -U USER NAME`) or point DATABASE_URL at another one"
        )
    if "InvalidPassword" in name or "authentication failed" in text:
        return StartupError(f"PostgreSQL at {where} refused the credentials; check DATABASE_URL")
    if _is_connection_fault(error):
        return StartupError(
            f"cannot reach PostgreSQL at {where} ({name}): start it "
            "(`pg_ctlcluster 15 main start`, or `docker compose up -d postgres`) "
            "or set DATABASE_URL"
        )
    return error


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, then its causes and contexts, each once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_connection_fault(error: BaseException) -> bool:
    return any(
        isinstance(link, OSError | TimeoutError | ConnectionError)
        or "Connection" in type(link).__name__
        or "CannotConnect" in type(link).__name__
        for link in _chain(error)
    )


_SSL_REASON: Final = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")


def _tls_failure(error: BaseException) -> str | None:
    """The reason of a failed TLS handshake anywhere in the error's chain (aiormq wraps the
    `ssl.SSLError` into its own connection error, keeping only its text)."""
    for link in _chain(error):
        if isinstance(link, ssl.SSLError):
            return str(link.reason or type(link).__name__)
        found = _SSL_REASON.search(str(link))
        if found:
            return found.group(1)
    return None
