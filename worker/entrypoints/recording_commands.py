"""`coupon-worker record` and `coupon-worker replay`: the CLI around `contracts.replay`.

`record` taps an exchange (see `contracts/replay.py` for why it taps rather than drains a queue)
and writes JSON lines in the format of `contracts/recording.py`; `replay` publishes such a file
again. Both show progress on standard error when it is a terminal (rich), and nothing otherwise.
A bad line is reported with its number: by default the whole file is refused before anything is
published (no partial replay); `--skip-bad-lines` publishes the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import aio_pika
from aio_pika.abc import AbstractConnection
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from contracts.names import Topology
from contracts.recording import BadLine, RecordedMessage, read_lines
from contracts.replay import Replayer, record
from worker.entrypoints.operator_errors import StartupError, describe_startup_failure
from worker.messaging.connection import ssl_context
from worker.settings import Settings

EXIT_NOT_DELIVERED = 1


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    recorder = commands.add_parser(
        "record",
        help="write what is routed to an exchange to a JSON-lines file",
        description="Bind a temporary queue of its own to the exchange and write every message "
        "routed to it from now on (body, routing key, properties, headers), one JSON line each, "
        "until --limit, --duration, or SIGINT/SIGTERM. A copy: consumers lose nothing.",
    )
    recorder.add_argument("file", help="output file ('-': standard output)")
    recorder.add_argument("--exchange", help="default: coupon.commands (under the prefix)")
    recorder.add_argument(
        "--pattern", action="append", help="binding pattern, repeatable (default: '#')"
    )
    recorder.add_argument("--limit", type=_positive_int, default=0, help="stop after N messages")
    recorder.add_argument("--duration", type=_positive_float, help="stop after S seconds")
    recorder.add_argument("--append", action="store_true", help="append to an existing file")

    replayer = commands.add_parser(
        "replay",
        help="publish a recorded JSON-lines file again",
        description="Publish every recorded message, in order, with its properties: the same "
        "message_ids make a replay idempotent. Exit 0: all published; 1: the broker did not "
        "take some; 2: bad lines (refused unless --skip-bad-lines) or a fault.",
    )
    replayer.add_argument("file", help="a recording ('-': standard input)")
    replayer.add_argument(
        "--exchange",
        help="publish to this exchange (default: coupon.commands under WORKER_NAME_PREFIX)",
    )
    replayer.add_argument(
        "--recorded-exchange",
        action="store_true",
        help="publish each message to the exchange it was recorded from",
    )
    replayer.add_argument(
        "--new-ids", action="store_true", help="fresh message_ids: apply everything again"
    )
    replayer.add_argument("--rate", type=_positive_float, help="at most R messages per second")
    replayer.add_argument(
        "--skip-bad-lines", action="store_true", help="report bad lines and publish the rest"
    )


async def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "record":
        return await _record(settings, args)
    return await _replay(settings, args)


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


async def _record(settings: Settings, args: argparse.Namespace) -> int:
    exchange = args.exchange or Topology(settings.name_prefix).commands_exchange
    patterns = args.pattern or ["#"]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if args.duration:
        loop.call_later(args.duration, stop.set)
    console = Console(stderr=True)
    connection = await _connect(settings, "coupon-worker record")
    try:
        with _output(args.file, args.append) as sink, console.status("recording") as status:
            written = 0

            def write(message: RecordedMessage) -> None:
                nonlocal written
                sink.write(message.to_line() + "\n")
                sink.flush()  # on disk before the tap's copy is acknowledged
                written += 1
                status.update(f"recording {exchange}: {written} messages")

            def bound() -> None:
                if not console.is_terminal:  # a line for scripts (and tests) to wait for
                    _say(console, f"recording {exchange} ({', '.join(patterns)})")

            count = await record(
                connection, exchange, patterns, write, limit=args.limit, stop=stop, on_ready=bound
            )
    except aio_pika.exceptions.ChannelNotFoundEntity:
        raise StartupError(f"exchange {exchange!r} does not exist") from None
    except (aio_pika.exceptions.AMQPError, ConnectionError) as error:
        raise StartupError(f"the broker connection failed while recording: {error!r}") from None
    finally:
        await connection.close()
    _say(console, f"recorded {count} messages from {exchange}")
    return 0


@contextlib.contextmanager
def _output(path: str, append: bool) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        return
    target = Path(path)
    try:
        handle = target.open("a" if append else "x", encoding="utf-8")
    except FileExistsError:
        raise StartupError(f"{path} exists: choose another file, or pass --append") from None
    try:
        with handle:
            yield handle
    except BaseException:
        if not append and target.stat().st_size == 0:
            target.unlink()  # nothing recorded: leave no empty file behind
        raise


@contextlib.contextmanager
def _recording(path: str) -> Iterator[IO[bytes]]:
    """The recording, seekable: standard input is spooled to a temporary file first, so that it
    can be read twice (checked, then published) without holding it in memory."""
    if path != "-":
        try:
            handle = Path(path).open("rb")  # noqa: SIM115
        except OSError as error:
            raise StartupError(f"cannot read {path}: {error.strerror}") from None
        with handle:
            yield handle
        return
    with tempfile.TemporaryFile() as spooled:
        shutil.copyfileobj(sys.stdin.buffer, spooled)
        spooled.seek(0)
        yield spooled


def _check(source: IO[bytes], path: str, skip: bool, console: Console) -> tuple[int, int]:
    """(good lines, bad lines), each bad one reported; fatal unless `skip`."""
    good = bad = 0
    for item in read_lines(source):
        if isinstance(item, BadLine):
            bad += 1
            _say(console, f"{path}: {item}" + ("; skipped" if skip else ""))
        else:
            good += 1
    if bad and not skip:
        raise StartupError(
            f"{path}: {bad} bad line(s), nothing published; fix them or pass --skip-bad-lines"
        )
    source.seek(0)
    return good, bad


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    exchange = None if args.recorded_exchange else (args.exchange or _commands(settings))
    with _recording(args.file) as source:
        total, bad = _check(source, args.file, args.skip_bad_lines, console)
        connection = await _connect(settings, "coupon-worker replay")
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            replayer = Replayer(channel, exchange=exchange, new_ids=args.new_ids, rate=args.rate)
            published = await _publish(replayer, source, args.file, total, console)
        except aio_pika.exceptions.ChannelNotFoundEntity as error:
            raise StartupError(f"the exchange to replay to does not exist: {error}") from None
        except (aio_pika.exceptions.AMQPError, ConnectionError) as error:
            raise StartupError(f"the broker connection failed while replaying: {error!r}") from None
        finally:
            await connection.close()
    _say(
        console,
        f"published {published} of {total} messages"
        + (f" ({bad} bad lines skipped)" if bad else ""),
    )
    return 0 if published == total else EXIT_NOT_DELIVERED


async def _publish(
    replayer: Replayer, source: IO[bytes], path: str, total: int, console: Console
) -> int:
    published = 0
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("replay", total=total)
        for item in read_lines(source):
            if isinstance(item, BadLine):
                continue  # reported by _check
            try:
                await replayer.publish(item.message)
            except aio_pika.exceptions.DeliveryError as error:
                where = f"{path}: line {item.line_number} ({item.message.routing_key})"
                _say(console, f"{where}: not delivered ({error!r})")
            else:
                published += 1
            progress.advance(task)
    return published


def _commands(settings: Settings) -> str:
    return Topology(settings.name_prefix).commands_exchange


def _say(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value
