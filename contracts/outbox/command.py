"""`coupon-contracts relay` (also `python -m contracts relay`): one relay as a process.

The database is `COUPON_RELAY_DATABASE_URL` (an SQLAlchemy async URL such as
`postgresql+asyncpg://…`), read from the environment only: on a command line any user of the
machine could read its password in the process list. The broker and the names' prefix are the
command line's (`--url`, else `COUPON_AMQP_URL`, `AMQP_URL`; `--prefix`, else
`COUPON_NAME_PREFIX`). SIGTERM or SIGINT stops it between two publishes; a batch in flight is
not marked sent, and is published again by the next relay (the worker answers the repeat with
the stored outcome).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from datetime import timedelta

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from contracts.outbox.publisher import AmqpPublisher
from contracts.outbox.relay import Relay, RelayPolicy
from contracts.outbox.staging import DEFAULT_TABLE, Outbox

DATABASE_VARIABLE = "COUPON_RELAY_DATABASE_URL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The relay's own options (the broker and the prefix are the command line's)."""
    defaults = RelayPolicy()
    parser.add_argument("--table", default=DEFAULT_TABLE, help="the outbox table's name")
    parser.add_argument("--schema", default=None, help="the outbox table's schema")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=defaults.poll_interval,
        help="seconds between looks when nothing is staged",
    )
    parser.add_argument(
        "--prune-after",
        type=float,
        default=defaults.prune_after.total_seconds(),
        help="seconds a sent row is kept (default: 7 days)",
    )


def main(args: argparse.Namespace, amqp_url: str, prefix: str) -> int:
    """Relay until SIGTERM or SIGINT; 0 then."""
    if not os.environ.get(DATABASE_VARIABLE):
        raise SystemExit(
            f"coupon-contracts relay: set {DATABASE_VARIABLE} (read from the environment only)"
        )
    try:
        policy = RelayPolicy(
            batch_size=args.batch_size,
            poll_interval=args.poll_interval,
            prune_after=timedelta(seconds=args.prune_after),
        )
    except ValueError as error:
        raise SystemExit(f"coupon-contracts relay: {error}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(_relay(args, policy, amqp_url, prefix))
    return 0


async def _relay(args: argparse.Namespace, policy: RelayPolicy, amqp_url: str, prefix: str) -> None:
    engine = create_async_engine(os.environ[DATABASE_VARIABLE], pool_pre_ping=True)
    publisher = AmqpPublisher(amqp_url, prefix)
    outbox = Outbox(MetaData(), name=args.table, schema=args.schema)
    relay = Relay(outbox, async_sessionmaker(engine, expire_on_commit=False), publisher, policy)
    task = asyncio.create_task(relay.run())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    logging.getLogger("contracts.outbox").info(
        "outbox_relay_started table=%s prefix=%s", outbox.table.fullname, prefix
    )
    try:
        await task
    except asyncio.CancelledError:
        logging.getLogger("contracts.outbox").info("outbox_relay_stopped")
    finally:
        await publisher.close()
        await engine.dispose()
