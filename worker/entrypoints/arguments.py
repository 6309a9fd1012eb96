"""The `coupon-worker` command line: its parser (most of it help text) and the one number type
its options use. Each command's implementation lives in its own module; `cli.py` dispatches."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final, TypeVar

from contracts.names import CONTRACT_VERSION
from worker.entrypoints.dead_letter_filters import duration
from worker.entrypoints.environment import describe_variables

Number = TypeVar("Number", int, float)


def number_in(
    low: Number, high: Number, kind: type[Number] = int, unit: str = ""
) -> Callable[[str], Number]:
    """An argparse type: a number of `kind` from `low` to `high` (in `unit`), or a clear
    refusal."""

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}{unit and ' ' + unit}")
        return value

    parse.__name__ = f"{kind.__name__} from {low} to {high}"
    return parse


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
        "--version", action="version", version=versions(), help="print the versions and exit"
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
        sub.add_argument(
            "--timeout",
            type=number_in(0.1, 3600, float, "seconds"),
            default=30.0,
            help="seconds to wait (default 30)",
        )

    events = commands.add_parser("events", help="follow coupon.events and print each event")
    events.add_argument("--pattern", default="coupon.*", help="binding pattern (default coupon.*)")
    events.add_argument(
        "--limit",
        type=number_in(0, 1_000_000_000),
        default=0,
        help="stop after N events (0: never)",
    )

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
        "--older-than-days",
        type=number_in(1, 36_500, float, "days"),
        required=True,
        help="retention window, in days (1-36500)",
    )
    prune.add_argument(
        "--batch-size",
        type=number_in(1, 1_000_000),
        default=10_000,
        help="rows per transaction (default 10000)",
    )

    commands.add_parser("schema", help="print the contract's JSON Schema")
    commands.add_parser("asyncapi", help="print the contract as an AsyncAPI 3.0 document")

    _add_dead_letters(commands)

    from worker.entrypoints.recording_commands import add_parsers as add_recording_parsers

    add_recording_parsers(commands)

    health = commands.add_parser("healthcheck", help="exit 0 if the worker's health file is fresh")
    health.add_argument(
        "--max-age",
        type=number_in(0.1, 86_400, float, "seconds"),
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


def versions() -> str:
    try:
        installed = version("coupon-worker")
    except PackageNotFoundError:  # run from a source tree that was never installed
        installed = "unknown"
    return f"coupon-worker {installed} (wire contract v{CONTRACT_VERSION})"


DEAD_LETTERS_LIMIT: Final = 10_000


def _add_dead_letters(commands: Any) -> None:
    """Register `dead-letters` on the CLI's subparsers."""
    dead = commands.add_parser(
        "dead-letters",
        help="inspect, re-drive or purge coupon.worker.dead",
        description="Letters are read with basic.get and held unacknowledged: one is removed "
        "only after the broker confirmed its re-drive (or by purge); the others go back to "
        "the queue in their place. Re-driving keeps each letter's message_id, so a command "
        "re-driven twice (an interrupted run repeated) is applied once.",
    )
    actions = dead.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="one line per letter")
    show = actions.add_parser("show", help="one letter with its body and every property")
    show.add_argument("message_id", help="the letter's message id (as `list` prints it)")
    redrive = actions.add_parser("redrive", help="send letters back to coupon.commands")
    redrive.add_argument("--dry-run", action="store_true", help="say what would be re-driven")
    redrive.add_argument(
        "--force", action="store_true", help="re-drive invalid letters too (they are refused)"
    )
    purge = actions.add_parser("purge", help="remove letters for good")
    purge.add_argument("--yes", action="store_true", help="required: purging cannot be undone")
    purge.add_argument("--dry-run", action="store_true", help="say what would be purged")
    for sub in (listing, redrive, purge):
        sub.add_argument("--error", action="append", default=[], help="x-error or broker reason")
        sub.add_argument("--routing-key", action="append", default=[], help="e.g. coupon.redeem")
        sub.add_argument("--message-id", action="append", default=[], help="this letter only")
        sub.add_argument("--older-than", type=duration, help="dead for longer than (30m, 7d)")
        sub.add_argument("--newer-than", type=duration, help="dead for less than (30m, 7d)")
    for sub in (listing, show, redrive, purge):
        sub.add_argument(
            "--limit",
            type=number_in(1, 1_000_000),
            default=DEAD_LETTERS_LIMIT,
            help=f"read at most this many letters (default {DEAD_LETTERS_LIMIT})",
        )
