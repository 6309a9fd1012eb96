"""`coupon-worker`: run, migrate, publish, events, record, replay, dead-letters, prune, schema,
asyncapi, healthcheck.

The parser and the dispatch, plus the three small database commands (migrate, prune,
healthcheck); over 200 lines because the parser's help texts are most of it. Each command's
heavy imports wait until it is chosen, so `schema` and `--help` stay fast."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

import structlog
from pydantic import ValidationError

from worker.app.failures import OperatorError
from worker.entrypoints.environment import describe_settings_error, describe_variables
from worker.logs import SecretScrubber, configure_logging
from worker.settings import Settings, secrets_of

EXIT_USAGE = 2

PUBLISH_EXIT_STATUS = """exit status:
  0  sent (without --wait), or the outcome was a success
  1  the outcome was coupon.error (DoesNotExist, AlreadyExists, Exhausted)
  2  invalid arguments or configuration, broker unreachable, or no outcome in time"""


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="coupon-worker",
        description="Coupon worker: consumes coupon commands from RabbitMQ, keeps coupons in "
        "PostgreSQL. Configured by environment variables: `coupon-worker run --help` lists "
        "them, with their defaults.",
    )
    parser.add_argument(
        "--version", action="version", version=_version(), help="print the versions and exit"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="consume commands until SIGTERM/SIGINT",
        description="Consume commands until SIGTERM/SIGINT.\n\nEvery coupon-worker command reads "
        "the variables below; an invalid value stops it\nwith one line per variable, before it "
        "connects anywhere.",
        epilog=describe_variables(),
        formatter_class=raw,
    )
    run.add_argument(
        "--migrate", action="store_true", help="upgrade the schema first (under an advisory lock)"
    )

    migrate = commands.add_parser("migrate", help="upgrade the database schema")
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")

    publish = commands.add_parser(
        "publish", help="send one command", epilog=PUBLISH_EXIT_STATUS, formatter_class=raw
    )
    kinds = publish.add_subparsers(dest="kind", required=True)
    for kind in ("create", "redeem", "get"):
        sub = kinds.add_parser(
            kind, help=f"send coupon.{kind}", epilog=PUBLISH_EXIT_STATUS, formatter_class=raw
        )
        sub.add_argument("--code", required=True, help="the coupon's code")
        if kind == "create":
            sub.add_argument(
                "--init-count", type=int, required=True, help="redemptions the coupon allows"
            )
        sub.add_argument("--message-id", help="idempotency key (default: a new UUID)")
        sub.add_argument(
            "--wait",
            action="store_true",
            help="wait for the outcome and print it (get always waits)",
        )
        sub.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")

    events = commands.add_parser("events", help="follow coupon.events and print each event")
    events.add_argument("--pattern", default="coupon.*", help="binding pattern (default coupon.*)")
    events.add_argument("--limit", type=int, default=0, help="stop after N events (0: never)")

    prune = commands.add_parser(
        "prune",
        help="delete processed-command records older than a retention window",
        description="Delete the processed_command rows (the stored outcomes that make a "
        "redelivered or republished command harmless) older than --older-than-days, oldest "
        "first, in batches of --batch-size, each its own transaction; safe while workers run. "
        "A command that arrives again after its row is gone is applied again: keep the window "
        "longer than any command can wait in a queue or be re-sent.",
    )
    prune.add_argument(
        "--older-than-days", type=_days, required=True, help="retention window, in days (>= 1)"
    )
    prune.add_argument(
        "--batch-size", type=_batch, default=10_000, help="rows per transaction (default 10000)"
    )

    commands.add_parser("schema", help="print the contract's JSON Schema")
    commands.add_parser("asyncapi", help="print the contract as an AsyncAPI 3.0 document")

    from worker.entrypoints.dead_letters import add_parser as add_dead_letters_parser

    add_dead_letters_parser(commands)

    from worker.entrypoints.recording_commands import add_parsers as add_recording_parsers

    add_recording_parsers(commands)

    health = commands.add_parser("healthcheck", help="exit 0 if the worker's health file is fresh")
    health.add_argument(
        "--max-age",
        type=float,
        default=30.0,
        help="seconds since WORKER_HEALTH_FILE was last touched that still count as healthy "
        "(default 30)",
    )
    health.add_argument(
        "--http",
        choices=("/healthz", "/readyz"),
        help="probe the worker's HTTP endpoint on WORKER_HTTP_PORT instead of the health file",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        from contracts.schema import main as print_schema

        print_schema()
        return
    if args.command == "asyncapi":
        from worker.entrypoints.asyncapi import main as print_asyncapi

        print_asyncapi()
        return
    try:
        settings = Settings()
    except ValidationError as error:
        _fail(describe_settings_error(error))
    scrubber = configure_logging(settings.log_format, settings.log_level, secrets_of(settings))
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(settings)) as runner:
            code = runner.run(_dispatch(args, settings, scrubber))
    except OperatorError as error:  # the one place an operator's error becomes exit status 2
        _fail(scrubber.scrub(str(error)))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def event_loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop (its event loop and sockets in C) unless `WORKER_UVLOOP=false` or the
    platform has none; None is asyncio's default loop."""
    if not settings.uvloop or sys.platform == "win32":
        return None
    import uvloop

    return uvloop.new_event_loop


async def _dispatch(args: argparse.Namespace, settings: Settings, scrubber: SecretScrubber) -> int:
    if args.command == "run":
        from worker.entrypoints.run import serve

        return await serve(settings, scrubber.scrub, migrate=args.migrate)
    if args.command == "migrate":
        return await _migrate(settings, args.revision)
    if args.command == "publish":
        from worker.entrypoints.client_commands import publish

        return await publish(settings, args)
    if args.command == "events":
        from worker.entrypoints.client_commands import follow_events

        return await follow_events(settings, args.pattern, args.limit)
    if args.command in ("record", "replay"):
        from worker.entrypoints.recording_commands import run as run_recording_command

        return await run_recording_command(settings, args)
    if args.command == "healthcheck":
        return _healthcheck(settings, args.max_age, args.http)
    if args.command == "dead-letters":
        from worker.entrypoints.dead_letters import run as dead_letters

        return await dead_letters(settings, args)
    if args.command == "prune":
        return await _prune(settings, args.older_than_days, args.batch_size)
    raise AssertionError(args.command)


async def _migrate(settings: Settings, revision: str) -> int:
    from worker.db import migrations
    from worker.db.engine import database
    from worker.entrypoints.operator_errors import describe_startup_failure

    async with database(settings, admin=True) as engine:
        try:
            migration = await migrations.upgrade(engine, revision)
        except Exception as error:
            raise describe_startup_failure(error, settings, "database") from error
    structlog.stdlib.get_logger(__name__).info(
        "schema_migrated", from_revision=migration.before, revision=migration.after
    )
    return 0


def _days(text: str) -> float:
    value = float(text)
    if not 1 <= value <= 36_500:
        raise argparse.ArgumentTypeError("must be from 1 to 36500 days")
    return value


def _batch(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError("must be from 1 to 1000000")
    return value


async def _prune(settings: Settings, older_than_days: float, batch_size: int) -> int:
    from worker.db import migrations
    from worker.db.engine import create_session_factory, database
    from worker.db.repositories import ProcessedCommandsRepository
    from worker.entrypoints.operator_errors import describe_startup_failure

    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    deleted = 0
    async with database(settings, admin=True) as engine:
        sessions = create_session_factory(engine)
        try:
            await migrations.ensure_current(engine)
            while True:
                async with sessions() as session, session.begin():
                    batch = await ProcessedCommandsRepository(session).prune(cutoff, batch_size)
                deleted += batch
                if batch < batch_size:
                    break
        except Exception as error:
            raise describe_startup_failure(error, settings, "database") from error
    structlog.stdlib.get_logger(__name__).info(
        "processed_commands_pruned", deleted=deleted, processed_before=cutoff.isoformat()
    )
    return 0


def _healthcheck(settings: Settings, max_age: float, http_path: str | None) -> int:
    if http_path is not None:
        from worker.observability.health import probe

        if settings.http_port is None:
            _fail("WORKER_HTTP_PORT is not set, so there is no HTTP endpoint to probe")
        failure = probe(settings.http_host, settings.http_port, http_path)
        if failure:
            _fail(failure)
        return 0
    path = settings.health_file
    if path is None:
        _fail("WORKER_HEALTH_FILE is not set, so there is nothing to check")
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        _fail(f"{path} does not exist: the worker is not consuming")
    if age > max_age:
        _fail(f"{path} is {age:.0f}s old: the worker stopped consuming")
    return 0


def _version() -> str:
    from contracts.names import CONTRACT_VERSION

    try:
        installed = version("coupon-worker")
    except PackageNotFoundError:  # run from a source tree that was never installed
        installed = "unknown"
    return f"coupon-worker {installed} (wire contract v{CONTRACT_VERSION})"


def _fail(message: str) -> NoReturn:
    print(f"coupon-worker: {message}", file=sys.stderr)  # noqa: T201 - the CLI's own output
    sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
