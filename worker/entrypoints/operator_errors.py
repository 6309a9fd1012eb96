"""Expected start-up faults, said so that a person can act on them (no traceback).

Recognised by the classes of aiormq, asyncpg and the standard library, anywhere in the error's
cause chain (`worker.app.failures.causes`)."""

from __future__ import annotations

import re
import ssl
from typing import Final, Literal

import aiormq.exceptions as amqp
import asyncpg.exceptions as pg
from pamqp import commands as frames
from pamqp.exceptions import AMQPInternalError

from worker.addresses import redact_url
from worker.app.failures import OperatorError, causes
from worker.settings import Settings


class StartupError(OperatorError):
    """A service the worker needs cannot be used as configured."""


# Reaching the service failed: sockets, timeouts, aiormq's connection errors (all OSErrors),
# and PostgreSQL refusing connections (class 08) or still starting up (57P03).
_UNREACHABLE: Final = (OSError, TimeoutError, pg.PostgresConnectionError, pg.CannotConnectNowError)
# RabbitMQ closes the connection during the handshake on bad credentials (aiormq cannot tell
# that from a dropped connection, hence "probable"), or answers the open with a close:
# ACCESS_REFUSED (403), or NOT_ALLOWED (530) for a virtual host the user may not use.
_REFUSALS: Final = (403, 530)


def describe_startup_failure(
    error: BaseException, settings: Settings, service: Literal["broker", "database"]
) -> BaseException:
    """An `OperatorError` naming the service, where it is, and how to start it; or `error`
    itself when it is not an expected fault (a bug keeps its traceback)."""
    if isinstance(error, OperatorError):
        return error
    chain = list(causes(error))
    name = type(error).__name__
    if service == "broker":
        where = redact_url(settings.amqp_url.get_secret_value())
        if any(_refused_by_broker(link) for link in chain):
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
        if any(isinstance(link, _UNREACHABLE) for link in chain):
            return StartupError(
                f"cannot reach RabbitMQ at {where} ({name}): start it "
                "(`rabbitmq-server -detached`, or `docker compose up -d rabbitmq`) "
                "or set AMQP_URL"
            )
        return error
    where = redact_url(settings.database_url.get_secret_value())
    if any(isinstance(link, pg.InvalidCatalogNameError) for link in chain):
        return StartupError(
            f"the database named in DATABASE_URL ({where}) does not exist: create it "
            "(`createdb -h HOST -U USER NAME`) or point DATABASE_URL at another one"
        )
    if any(isinstance(link, pg.InvalidAuthorizationSpecificationError) for link in chain):
        return StartupError(f"PostgreSQL at {where} refused the credentials; check DATABASE_URL")
    if any(isinstance(link, _UNREACHABLE) for link in chain):
        return StartupError(
            f"cannot reach PostgreSQL at {where} ({name}): start it "
            "(`pg_ctlcluster 15 main start`, or `docker compose up -d postgres`) "
            "or set DATABASE_URL"
        )
    return error


def _refused_by_broker(error: BaseException) -> bool:
    if isinstance(error, amqp.ProbableAuthenticationError | amqp.AuthenticationError):
        return True
    if isinstance(error, amqp.ConnectionClosed):  # aiormq keeps the reply code first
        return bool(error.args) and error.args[0] in _REFUSALS
    # A close frame where aiormq expected Connection.OpenOk (e.g. an unknown virtual host).
    return isinstance(error, AMQPInternalError) and any(
        isinstance(frame, frames.Connection.Close) and frame.reply_code in _REFUSALS
        for frame in error.args
    )


_SSL_REASON: Final = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")


def _tls_failure(error: BaseException) -> str | None:
    """The reason of a failed TLS handshake anywhere in the error's chain (aiormq wraps the
    `ssl.SSLError` into its own connection error, keeping only its text)."""
    for link in causes(error):
        if isinstance(link, ssl.SSLError):
            return str(link.reason or type(link).__name__)
        found = _SSL_REASON.search(str(link))
        if found:
            return found.group(1)
    return None
