"""`coupon-contracts` (also `python -m contracts`): the client's command line (`client` extra
for `record` and `replay`).

- `schema`: the contract as JSON Schema, for clients in other languages (pydantic only);
- `record FILE`: tap an exchange (a temporary queue of its own: consumers lose nothing; see
  `contracts.replay`) and write every message routed to it as JSON lines (`contracts.recording`)
  until `--limit`, `--duration`, or SIGINT/SIGTERM;
- `replay FILE`: publish a recording again, in order, confirmed: the same message_ids make it
  idempotent. A bad line is reported with its number and, unless `--skip-bad-lines`, nothing is
  published (no partial replay);
- `relay`: publish the commands staged in an outbox table until stopped (`outbox` extra;
  `contracts.outbox.command`, its database from `COUPON_RELAY_DATABASE_URL`).

The broker is `--url` (else `COUPON_AMQP_URL`, `AMQP_URL`, or a local RabbitMQ) and the names
carry `--prefix` (else `COUPON_NAME_PREFIX`). `coupon-worker record` / `replay` are the same
commands on the worker's own settings (its node list, TLS and `WORKER_NAME_PREFIX`).
Exit status: 0 done; 1 the broker did not take some replayed messages; 2 bad arguments, bad
lines, or a broker that cannot be used.

Over 250 lines for a reason: three commands, each with its parser (most of it help text) and
its run; the work itself is `contracts.recording`'s and `contracts.replay`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from contracts import names
from contracts.names import Topology
from contracts.recording import BadLine, RecordedMessage, read_lines

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

    from contracts.replay import Replayer

__all__ = ["CommandError", "add_recording_parsers", "build_parser", "main", "run_recording"]

EXIT_NOT_DELIVERED: Final = 1
EXIT_USAGE: Final = 2
DEFAULT_URL: Final = "amqp://guest:guest@localhost:5672/"

# Opens a connection to the broker, given the name it shows in the management UI.
Connect = Callable[[str], Awaitable["AbstractConnection"]]


class CommandError(Exception):
    """A failure a user fixes (bad file, missing exchange...): one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The `coupon-contracts` parser."""
    parser = argparse.ArgumentParser(
        prog="coupon-contracts",
        description=f"The coupon worker's wire contract v{names.CONTRACT_VERSION}: its JSON "
        "Schema, and recording and replaying traffic on a broker.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"wire contract v{names.CONTRACT_VERSION}",
        help="print the contract version and exit",
    )
    parser.add_argument("--url", help="the broker (default: COUPON_AMQP_URL, AMQP_URL, local)")
    parser.add_argument("--prefix", help="the names' prefix (default: COUPON_NAME_PREFIX, none)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("schema", help="JSON Schema of every command, event and reply")
    add_recording_parsers(commands)
    relay = commands.add_parser(
        "relay",
        help="publish the commands staged in an outbox table (the `outbox` extra)",
        description="Publish the commands staged in an outbox table (contracts.outbox) until "
        "SIGTERM/SIGINT. The database: COUPON_RELAY_DATABASE_URL (environment only).",
    )
    try:
        from contracts.outbox.command import add_arguments
    except ImportError:  # without the extra, `relay` says what to install when run
        relay.set_defaults(missing_extra=True)
    else:
        add_arguments(relay)
    return parser


def add_recording_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`record` and `replay`, for this command line and the worker's."""
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
        "--exchange", help="publish to this exchange (default: coupon.commands under the prefix)"
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


def main(argv: Sequence[str] | None = None) -> None:
    """The `coupon-contracts` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        from contracts.schema import main as print_schema

        print_schema()
        return
    env = os.environ
    url = args.url or env.get("COUPON_AMQP_URL") or env.get("AMQP_URL") or DEFAULT_URL
    prefix = args.prefix if args.prefix is not None else env.get("COUPON_NAME_PREFIX", "")
    if args.command == "relay":
        if getattr(args, "missing_extra", False):
            print("coupon-contracts: relay needs coupon-contracts[outbox]", file=sys.stderr)  # noqa: T201
            sys.exit(EXIT_USAGE)
        from contracts.outbox.command import main as relay

        sys.exit(relay(args, url, prefix))

    async def connect(name: str) -> AbstractConnection:
        import aio_pika

        try:
            return await aio_pika.connect(url, client_properties={"connection_name": name})
        except Exception as error:
            raise CommandError(f"cannot connect to the broker: {error!r}") from None

    try:
        code = asyncio.run(run_recording(args, connect, prefix))
    except CommandError as error:
        print(f"coupon-contracts: {error}", file=sys.stderr)  # noqa: T201 - the CLI's output
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


async def run_recording(args: argparse.Namespace, connect: Connect, prefix: str) -> int:
    """`record` or `replay` as parsed by `add_recording_parsers`."""
    if args.command == "record":
        return await _record(args, connect, Topology(prefix).commands_exchange)
    return await _replay(args, connect, Topology(prefix).commands_exchange)


async def _record(args: argparse.Namespace, connect: Connect, commands: str) -> int:
    import aio_pika

    from contracts.replay import record

    exchange = args.exchange or commands
    patterns = args.pattern or ["#"]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if args.duration:
        loop.call_later(args.duration, stop.set)
    connection = await connect("coupon record")
    try:
        with _output(args.file, args.append) as sink:

            def write(message: RecordedMessage) -> None:
                sink.write(message.to_line() + "\n")
                sink.flush()  # on disk before the tap's copy is acknowledged

            def bound() -> None:  # a line for scripts (and tests) to wait for
                _say(f"recording {exchange} ({', '.join(patterns)})")

            count = await record(
                connection, exchange, patterns, write, limit=args.limit, stop=stop, on_ready=bound
            )
    except aio_pika.exceptions.ChannelNotFoundEntity:
        raise CommandError(f"exchange {exchange!r} does not exist") from None
    except (aio_pika.exceptions.AMQPError, ConnectionError) as error:
        raise CommandError(f"the broker connection failed while recording: {error!r}") from None
    finally:
        await connection.close()
    _say(f"recorded {count} messages from {exchange}")
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
        raise CommandError(f"{path} exists: choose another file, or pass --append") from None
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
            raise CommandError(f"cannot read {path}: {error.strerror}") from None
        with handle:
            yield handle
        return
    with tempfile.TemporaryFile() as spooled:
        shutil.copyfileobj(sys.stdin.buffer, spooled)
        spooled.seek(0)
        yield spooled


def _check(source: IO[bytes], path: str, skip: bool) -> tuple[int, int]:
    """(good lines, bad lines), each bad one reported; fatal unless `skip`."""
    good = bad = 0
    for item in read_lines(source):
        if isinstance(item, BadLine):
            bad += 1
            _say(f"{path}: {item}" + ("; skipped" if skip else ""))
        else:
            good += 1
    if bad and not skip:
        raise CommandError(
            f"{path}: {bad} bad line(s), nothing published; fix them or pass --skip-bad-lines"
        )
    source.seek(0)
    return good, bad


async def _replay(args: argparse.Namespace, connect: Connect, commands: str) -> int:
    import aio_pika

    from contracts.replay import Replayer

    exchange = None if args.recorded_exchange else (args.exchange or commands)
    with _recording(args.file) as source:
        total, bad = _check(source, args.file, args.skip_bad_lines)
        connection = await connect("coupon replay")
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            replayer = Replayer(channel, exchange=exchange, new_ids=args.new_ids, rate=args.rate)
            published = await _publish(replayer, source, args.file)
        except aio_pika.exceptions.ChannelNotFoundEntity as error:
            raise CommandError(f"the exchange to replay to does not exist: {error}") from None
        except (aio_pika.exceptions.AMQPError, ConnectionError) as error:
            raise CommandError(f"the broker connection failed while replaying: {error!r}") from None
        finally:
            await connection.close()
    skipped = f" ({bad} bad lines skipped)" if bad else ""
    _say(f"published {published} of {total} messages{skipped}")
    return 0 if published == total else EXIT_NOT_DELIVERED


async def _publish(replayer: Replayer, source: IO[bytes], path: str) -> int:
    import aio_pika

    published = 0
    for item in read_lines(source):
        if isinstance(item, BadLine):
            continue  # reported by _check
        try:
            await replayer.publish(item.message)
        except aio_pika.exceptions.DeliveryError as error:
            where = f"{path}: line {item.line_number} ({item.message.routing_key})"
            _say(f"{where}: not delivered ({error!r})")
        else:
            published += 1
    return published


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # noqa: T201 - the CLI's own output


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
