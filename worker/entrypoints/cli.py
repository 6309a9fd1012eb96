"""`coupon-worker`: run, migrate, publish, events, record, replay, dead-letters, prune, schema,
asyncapi, healthcheck.

Configuration, logging, the event loop and the dispatch; the parser is `arguments.py`, each
command its own module. Each command's heavy imports wait until it is chosen, so `schema` and
`--help` stay fast."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from pydantic import ValidationError

from worker.app.failures import OperatorError
from worker.entrypoints.arguments import build_parser
from worker.entrypoints.environment import describe_settings_error
from worker.logs import SecretScrubber, configure_logging
from worker.settings import Settings, secrets_of

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        from contracts.schema import main as print_schema

        print_schema()
        return
    if args.command == "asyncapi":
        from contracts.asyncapi import main as print_asyncapi

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
        from worker.entrypoints.database_commands import migrate

        return await migrate(settings, args.revision)
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
        from worker.entrypoints.healthcheck import healthcheck

        return healthcheck(settings, args.max_age, args.http)
    if args.command == "dead-letters":
        from worker.entrypoints.dead_letters import run as dead_letters

        return await dead_letters(settings, args)
    if args.command == "prune":
        from worker.entrypoints.database_commands import prune

        return await prune(settings, args.older_than_days, args.batch_size)
    raise AssertionError(args.command)


def _fail(message: str) -> NoReturn:
    print(f"coupon-worker: {message}", file=sys.stderr)  # noqa: T201 - the CLI's own output
    sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
