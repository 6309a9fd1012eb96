"""`coupon-worker dead-letters list|show|redrive|purge`: the dead-letter queue as a tool.

A table on a terminal (and a progress bar for long operations, on standard error); JSON lines
when piped, one object per letter. How letters are read, re-driven and removed without loss is
`worker.messaging.dead_letter_queue`'s business, which letters are meant `dead_letter_filters`';
this module runs the four actions and shows them (longer than most modules: one subcommand's
parser, actions and presentation, read top to bottom).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import aio_pika
from aiormq.exceptions import ChannelClosed

from contracts.names import Topology
from worker.entrypoints.dead_letter_filters import LetterFilter
from worker.entrypoints.operator_errors import StartupError, describe_startup_failure
from worker.messaging.connection import ssl_context
from worker.messaging.dead_letter_queue import DeadLetter, DeadLetterQueue, Snapshot
from worker.settings import Settings

if TYPE_CHECKING:  # rich is imported when a dead-letters command runs, not for every CLI call
    from aio_pika.abc import AbstractConnection
    from rich.progress import Progress


class Output:
    """Tables and progress bars for a person, JSON lines for a program."""

    def __init__(self) -> None:
        from rich.console import Console

        self.tty = sys.stdout.isatty()
        self.console = Console()
        self.status = Console(stderr=True)

    def record(self, record: dict[str, Any]) -> None:
        print(json.dumps(record, default=str), flush=True)  # noqa: T201 - the CLI's output

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        from rich.table import Table

        table = Table(show_lines=False)
        for column in columns:
            table.add_column(column, no_wrap=column != "value", overflow="ellipsis")
        for row in rows:
            table.add_row(*(_cell(row.get(column)) for column in columns))
        self.console.print(table)

    def progress(self) -> Progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.status,
            disable=not self.status.is_terminal,
            transient=True,
        )


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


async def run(settings: Settings, args: argparse.Namespace) -> int:
    topology = Topology(settings.name_prefix)
    connection = await _connect(settings)
    try:
        queue = DeadLetterQueue(connection, topology)
        action: Callable[[DeadLetterQueue, argparse.Namespace, Output], Any] = _ACTIONS[args.action]
        try:
            return int(await action(queue, args, Output()))
        except ChannelClosed as error:
            if "NOT_FOUND" in str(error):
                raise StartupError(
                    f"the broker has no queue {topology.dead_queue!r}: is WORKER_NAME_PREFIX "
                    f"({settings.name_prefix!r}) right, and has a worker declared its topology?"
                ) from None
            raise
    finally:
        await connection.close()


async def _connect(settings: Settings) -> AbstractConnection:
    try:
        return await aio_pika.connect(
            settings.amqp_url.get_secret_value(),
            ssl_context=ssl_context(settings),
            timeout=10,
            client_properties={"connection_name": "coupon-worker dead-letters"},
        )
    except Exception as error:
        raise describe_startup_failure(error, settings, "broker") from error


async def _matching(
    snapshot: Snapshot, letters: LetterFilter, out: Output, progress: Progress
) -> AsyncIterator[DeadLetter]:
    now = datetime.now(UTC)
    reading = progress.add_task("reading", total=snapshot.total)
    async for letter in snapshot.read():
        progress.advance(reading)
        if letters.matches(letter, now):
            yield letter


async def _list(queue: DeadLetterQueue, args: argparse.Namespace, out: Output) -> int:
    now = datetime.now(UTC)
    rows = []
    with out.progress() as progress:
        async with queue.snapshot(args.limit) as snapshot:
            async for letter in _matching(snapshot, LetterFilter.from_args(args), out, progress):
                rows.append(letter.summary(now))
                if not out.tty:
                    out.record(rows[-1])
    if out.tty:
        columns = ["message_id", "routing_key", "error", "detail", "deaths", "first_death_at"]
        out.table(rows, columns)
        out.status.print(f"{len(rows)} of {snapshot.total} letters read")
    return 0


async def _show(queue: DeadLetterQueue, args: argparse.Namespace, out: Output) -> int:
    only = LetterFilter(message_ids=frozenset({args.message_id}))
    with out.progress() as progress:
        async with queue.snapshot(args.limit) as snapshot:
            async for letter in _matching(snapshot, only, out, progress):
                details = _details(letter)
                if out.tty:
                    out.table(
                        [{"field": k, "value": v} for k, v in details.items() if k != "body"],
                        ["field", "value"],
                    )
                    out.console.print(details["body"])
                else:
                    out.record(details)
                return 0
    out.status.print(f"no letter with message_id {args.message_id!r} among {snapshot.total}")
    return 1


def _details(letter: DeadLetter) -> dict[str, Any]:
    properties = {
        key: value
        for key, value in letter.message.info().items()
        if key not in ("headers", "delivery_tag", "consumer_tag", "redelivered", "body_size")
        and value not in (None, "", "None")
    }
    try:
        body: Any = letter.message.body.decode()
    except UnicodeDecodeError:
        body = letter.message.body.hex()
    return {
        **letter.summary(datetime.now(UTC)),
        "properties": properties,
        "headers": dict(letter.headers),
        "body": body,
    }


async def _redrive(queue: DeadLetterQueue, args: argparse.Namespace, out: Output) -> int:
    now = datetime.now(UTC)
    counts = {"redriven": 0, "refused": 0, "would_redrive": 0}
    with out.progress() as progress:
        async with queue.snapshot(args.limit) as snapshot:
            chosen: list[DeadLetter] = []
            async for letter in _matching(snapshot, LetterFilter.from_args(args), out, progress):
                if not (letter.redrivable or args.force):
                    _report(out, letter, now, "refused", counts)
                elif args.dry_run:
                    _report(out, letter, now, "would_redrive", counts)
                else:
                    chosen.append(letter)
            sending = progress.add_task("re-driving", total=len(chosen))
            try:
                async for letter in queue.redrive(chosen):
                    progress.advance(sending)
                    _report(out, letter, now, "redriven", counts)
            except aio_pika.exceptions.AMQPError as error:
                # Unroutable (no queue bound to coupon.commands for its key) or refused: this
                # letter and those after it stay in the dead-letter queue.
                _summary(out, counts)
                raise StartupError(
                    f"the broker did not take a re-driven letter ({type(error).__name__}: "
                    f"{error}); {counts['redriven']} re-driven, the rest left in the queue: is "
                    "a worker's queue bound to coupon.commands?"
                ) from None
    _summary(out, counts, "invalid letters are refused: fix and re-send them, or --force")
    return 0


async def _purge(queue: DeadLetterQueue, args: argparse.Namespace, out: Output) -> int:
    if not (args.yes or args.dry_run):
        raise StartupError(
            "purge removes letters for good: add --yes (see them first with `dead-letters list` "
            "and the same filters, or --dry-run)"
        )
    now = datetime.now(UTC)
    counts = {"purged": 0, "would_purge": 0}
    with out.progress() as progress:
        async with queue.snapshot(args.limit) as snapshot:
            async for letter in _matching(snapshot, LetterFilter.from_args(args), out, progress):
                if not args.dry_run:
                    await letter.remove()
                _report(out, letter, now, "would_purge" if args.dry_run else "purged", counts)
    _summary(out, counts)
    return 0


def _report(
    out: Output, letter: DeadLetter, now: datetime, result: str, counts: dict[str, int]
) -> None:
    counts[result] += 1
    if not out.tty:
        out.record({"result": result, **letter.summary(now)})
    elif result != "redriven" and result != "purged":
        out.status.print(f"{result}: {letter.message_id} {letter.routing_key} ({letter.error})")


def _summary(out: Output, counts: dict[str, int], refused_note: str = "") -> None:
    if not out.tty:
        return
    out.status.print(", ".join(f"{key.replace('_', ' ')} {value}" for key, value in counts.items()))
    if counts.get("refused") and refused_note:
        out.status.print(refused_note)


_ACTIONS: Final = {"list": _list, "show": _show, "redrive": _redrive, "purge": _purge}
