"""`coupon-worker record` and `coupon-worker replay`: aliases of `coupon-contracts record` and
`replay` (`contracts.cli`), on the worker's settings: the first of AMQP_URL's nodes that
answers, with its TLS settings, and WORKER_NAME_PREFIX."""

from __future__ import annotations

import argparse

import aio_pika
from aio_pika.abc import AbstractConnection

from contracts.cli import CommandError, add_recording_parsers, run_recording
from worker.entrypoints.operator_errors import StartupError, describe_startup_failure
from worker.messaging.connection import ssl_context
from worker.settings import Settings

__all__ = ["add_parsers", "run"]

add_parsers = add_recording_parsers


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run `record` or `replay`; a user's error is a `StartupError` (exit status 2)."""

    async def connect(name: str) -> AbstractConnection:
        return await _connect(settings, f"coupon-worker {name.removeprefix('coupon ')}")

    try:
        return await run_recording(args, connect, settings.name_prefix)
    except CommandError as error:
        raise StartupError(str(error)) from None


async def _connect(settings: Settings, name: str) -> AbstractConnection:
    """The first of AMQP_URL's nodes that answers (a one-off connection: a recording or a
    replay interrupted by a lost connection reports it and can be run again)."""
    failure: Exception | None = None
    for url in settings.broker_urls():  # with the heartbeat, like the worker's own connection
        try:
            return await aio_pika.connect(
                url,
                ssl_context=ssl_context(settings),
                timeout=settings.amqp_connect_timeout,
                client_properties={"connection_name": name},
            )
        except Exception as error:
            failure = error
    assert failure is not None, "AMQP_URL names at least one node"
    raise describe_startup_failure(failure, settings, "broker") from failure
