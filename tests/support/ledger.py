"""The fault suite's checker: every command sent, judged against the database and the events.

A `Ledger` records each command a test publishes (its `message_id`, routing key, body and what
it should lead to), collects every outcome event the worker publishes on the events exchange,
and at the end reads the database and the dead-letter queue. `check(engine)` compares the three
sources and returns a `LedgerReport` with the figures and a list of problems; `assert_ok()` fails
the test with all of them at once.

    ledger = Ledger(broker)
    await ledger.start()                      # bind the event collector before sending
    await ledger.send(CreateCoupon(code="A", init_count=3))
    await ledger.send(RedeemCoupon(code="A"), message_id=same_id)   # a duplicate publish
    ledger.record(message_id, "coupon.create", body, Expect.DEAD_LETTER, error="InvalidJson")
    await ledger.wait_settled(within=60)      # every expected outcome / dead letter arrived
    report = await ledger.check(engine)
    report.emit("crash anywhere", capsys, kills=5)   # one line of figures, visible with capture
    report.assert_ok()

Waiting: `wait_outcomes(within)` (every command expecting an outcome has one; returns the
seconds it took), `wait_for(*message_ids)`, `wait_received(count)`, `wait_settled(within)`
(outcomes complete, then quiet, so late duplicates are counted); `missing_outcomes()` and
`received()` look without waiting. `SteadyFlow(ledger, make)` keeps commands flowing in bursts
through an outage, retrying unconfirmed publishes with the same message_id.

What `check` holds the worker to (contract v1, "Guarantees"):
- lost = 0: every command expecting an outcome has at least one event with
  `causation_id` = its `message_id`; every command expecting a dead letter is in the dead queue;
- exactly one distinct outcome per command: all copies of a command's outcome carry one event
  `message_id`, one routing key and one body (extra copies are counted as `duplicates`, which
  at-least-once delivery allows);
- 0 doubled effects: each coupon row came from exactly one distinct `coupon.created` event (same
  id), and its `init_count - remaining_count` equals its distinct `coupon.redeemed` events, whose
  `remaining_count`s are exactly `init_count-1 … remaining_count`, each once;
- `processed_command` holds exactly one row per applied command, with the published outcome;
- nothing dead-lettered unless expected, and then exactly once, with the expected `x-error`;
- no event, row or coupon that no recorded command explains;
- wrong = 0: each outcome is the one the commands alone call for (`tests/support/oracle.py`): no
  `Exhausted` while the coupon has redemptions left, no `DoesNotExist` for a coupon the test had
  seen created, and for coupons whose redeems all came after that, exactly
  `min(redeems, init_count)` granted and a final count of `init_count` minus them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import names
from contracts.commands import Command
from contracts.messages import command_message
from tests.support import figures
from tests.support.broker import Broker, Collected
from tests.support.oracle import check_outcomes
from worker.db import tables


class Expect(StrEnum):
    """What a command must lead to."""

    OUTCOME = "outcome"  # one outcome event on the events exchange (and a processed row)
    DEAD_LETTER = "dead_letter"  # exactly one copy in the dead-letter queue, no effect
    NOTHING = "nothing"  # no event and no row (e.g. `coupon.get`, answered on reply_to only)


@dataclass
class SentCommand:
    message_id: str
    routing_key: str
    body: bytes
    expect: Expect
    error: str | None = None  # the expected `x-error` of a dead letter, when it matters
    sends: int = 0  # how many times it was published (duplicates share the message_id)
    # Every publish of it went out after the test had seen its coupon's `coupon.created`: a
    # redeem that must then never be answered DoesNotExist (see tests/support/oracle.py).
    established: bool = False

    @property
    def code(self) -> str | None:
        try:
            value = json.loads(self.body).get("code")
        except (ValueError, AttributeError, RecursionError):
            return None
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class ReceivedCopy:
    """One copy of an outcome event, as the events exchange delivered it."""

    causation_id: str | None
    message_id: str | None
    routing_key: str
    body: bytes


@dataclass
class LedgerReport:
    sent: int = 0  # publishes, duplicates included
    commands: int = 0  # distinct message_ids
    coupons: int = 0  # coupon rows in the database
    redemptions: int = 0  # sum of init_count - remaining_count
    processed_rows: int = 0  # processed_command rows
    outcomes: int = 0  # distinct outcomes (by causation_id) received
    event_copies: int = 0  # event messages received, copies included
    duplicates: int = 0  # event_copies - outcomes: extra copies (at-least-once)
    dead_lettered: int = 0  # messages found in the dead-letter queue
    lost: int = 0  # commands without their outcome / dead letter
    doubled: int = 0  # effects or outcomes applied more than once
    wrong: int = 0  # outcomes that differ from what the commands alone say they must be
    outcome_kinds: dict[str, int] = field(default_factory=dict)  # e.g. {"Exhausted": 12}
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def figures(self, **extra: object) -> dict[str, object]:
        figures: dict[str, object] = {
            "sent": self.sent,
            "commands": self.commands,
            "coupons": self.coupons,
            "redemptions": self.redemptions,
            "processed_rows": self.processed_rows,
            "distinct_outcomes": self.outcomes,
            "event_copies": self.event_copies,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "lost": self.lost,
            "doubled": self.doubled,
            "wrong_outcomes": self.wrong,
        }
        figures.update(extra)
        return figures

    def line(self, label: str, **extra: object) -> str:
        return figures.line(label, self._stated(**extra))

    def _stated(self, **extra: object) -> dict[str, object]:
        kinds = ",".join(f"{kind}:{count}" for kind, count in sorted(self.outcome_kinds.items()))
        return {**self.figures(**extra), "outcome_kinds": kinds or "-"}

    def emit(
        self, label: str, capsys: pytest.CaptureFixture[str] | None = None, **extra: object
    ) -> str:
        """Print the figures line (it shows in CI output even with capture on) and keep it for
        the run's result file (tests/support/figures.py)."""
        return figures.state(label, capsys, **self._stated(**extra))

    def assert_ok(self) -> None:
        if self.problems:
            shown = self.problems[:40]
            more = len(self.problems) - len(shown)
            raise AssertionError(
                f"ledger check failed ({len(self.problems)} problems): "
                + "; ".join(shown)
                + (f"; … and {more} more" if more else "")
                + f"\n{self.line('failed')}"
            )


class Ledger:
    """Commands sent, outcomes received, and the check between them and the database.

    Use one per test, with the test's `Broker`. The event collector is a queue bound to the
    events exchange; pass `durable=True` when the broker will be restarted under it (needs a
    robust `Broker` connection for the consumer to come back).
    """

    def __init__(self, broker: Broker, *, durable: bool = False) -> None:
        self.broker = broker
        self.durable = durable
        self.commands: dict[str, SentCommand] = {}
        self.sent = 0
        self.copies: list[ReceivedCopy] = []
        self.by_causation: dict[str, list[ReceivedCopy]] = defaultdict(list)
        self.created_codes: set[str] = set()  # codes whose coupon.created has arrived
        self._collected: Collected | None = None
        self._read = 0

    async def start(self) -> None:
        """Start collecting events; call before the first command is sent."""
        self._collected = await self.broker.collect(
            self.broker.topology.events_exchange, durable=self.durable
        )

    # --- what was sent ----------------------------------------------------------------------

    def record(
        self,
        message_id: str,
        routing_key: str,
        body: bytes,
        expect: Expect = Expect.OUTCOME,
        *,
        error: str | None = None,
        established: bool = False,
    ) -> SentCommand:
        """Note one publish of a command (call it for every publish, duplicates included).
        `established`: the test had seen the coupon's `coupon.created` before this publish."""
        self.sent += 1
        entry = self.commands.get(message_id)
        if entry is None:
            entry = SentCommand(message_id, routing_key, body, expect, error, 0, established)
            self.commands[message_id] = entry
        else:  # established only if every publish of it was
            entry.established = entry.established and established
        entry.sends += 1
        return entry

    async def send(
        self,
        command: Command,
        *,
        message_id: str | None = None,
        expect: Expect | None = None,
        reply_to: str | None = None,
    ) -> str:
        """Publish `command` (confirmed) through the broker and record it; returns its id."""
        message = command_message(command, message_id=message_id, reply_to=reply_to)
        # Judged before publishing: a coupon.created seen now was committed before this publish.
        established = self.has_created(command.code)
        await self.broker.send(command, message_id=message.message_id, reply_to=reply_to)
        default = Expect.NOTHING if command.routing_key == names.GET else Expect.OUTCOME
        self.record(
            message.message_id,
            message.routing_key,
            message.body,
            expect or default,
            established=established,
        )
        return message.message_id

    def has_created(self, code: str) -> bool:
        """Whether a `coupon.created` for `code` has arrived."""
        self._take_new()
        return code in self.created_codes

    async def send_many(
        self, commands: Iterable[tuple[Command, str | None]], *, concurrency: int = 64
    ) -> list[str]:
        """Publish `(command, message_id or None)` pairs, up to `concurrency` awaiting confirms."""
        slots = asyncio.Semaphore(concurrency)

        async def one(command: Command, message_id: str | None) -> str:
            async with slots:
                return await self.send(command, message_id=message_id)

        return list(await asyncio.gather(*(one(c, m) for c, m in commands)))

    def expected(self, expect: Expect) -> list[SentCommand]:
        return [c for c in self.commands.values() if c.expect is expect]

    # --- what came out ----------------------------------------------------------------------

    def _take_new(self) -> None:
        assert self._collected is not None, "start() first"
        messages = self._collected.messages
        while self._read < len(messages):
            copy = _copy_of(messages[self._read])
            self._read += 1
            self.copies.append(copy)
            if copy.causation_id is not None:
                self.by_causation[copy.causation_id].append(copy)
            if copy.routing_key == names.CREATED:
                with contextlib.suppress(ValueError, AttributeError):
                    self.created_codes.add(str(json.loads(copy.body).get("code")))

    def received(self) -> int:
        """How many event copies have arrived so far."""
        self._take_new()
        return len(self.copies)

    async def wait_received(self, count: int, within: float = 30.0) -> None:
        """Wait until at least `count` event copies have arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.received() < count:
            if loop.time() > deadline:
                raise AssertionError(f"{self.received()} of {count} events after {within}s")
            await asyncio.sleep(0.05)

    def missing_outcomes(self) -> list[str]:
        """Commands expecting an outcome that has not arrived (yet)."""
        self._take_new()
        return [
            c.message_id
            for c in self.expected(Expect.OUTCOME)
            if c.message_id not in self.by_causation
        ]

    async def wait_for(
        self, *message_ids: str, within: float = 30.0, at_least: int | None = None
    ) -> None:
        """Wait until each of these commands (or `at_least` of them) has an outcome event."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        needed = len(message_ids) if at_least is None else at_least
        while True:
            self._take_new()
            missing = [m for m in message_ids if m not in self.by_causation]
            if len(message_ids) - len(missing) >= needed:
                return
            if loop.time() > deadline:
                raise AssertionError(f"no outcome within {within}s for {missing}")
            await asyncio.sleep(0.05)

    async def wait_outcomes(self, within: float = 60.0) -> float:
        """Wait until every command expecting an outcome has one; returns the seconds waited."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while missing := self.missing_outcomes():
            if loop.time() - started > within:
                raise AssertionError(
                    f"{len(missing)} of {len(self.expected(Expect.OUTCOME))} commands still "
                    f"without an outcome after {within}s (e.g. {missing[:3]})"
                )
            await asyncio.sleep(0.1)
        return loop.time() - started

    async def wait_settled(self, within: float = 60.0, quiet: float = 0.5) -> None:
        """Every expected outcome arrived, then no new copy for `quiet` seconds (so that late
        duplicates are counted, not missed). Dead letters are read by `check`."""
        await self.wait_outcomes(within)
        await self.wait_quiet(quiet)

    async def wait_quiet(self, quiet: float = 0.5) -> None:
        """Until no new event copy has arrived for `quiet` seconds."""
        assert self._collected is not None, "start() first"
        while True:
            seen = len(self._collected.messages)
            await asyncio.sleep(quiet)
            if len(self._collected.messages) == seen:
                break
        self._take_new()

    # --- the check --------------------------------------------------------------------------

    async def check(
        self, engine: AsyncEngine, dead_letters: list[AbstractIncomingMessage] | None = None
    ) -> LedgerReport:
        """Compare commands, events, database and dead letters. `dead_letters` defaults to
        draining the dead-letter queue now (pass them if the test already drained it)."""
        self._take_new()
        if dead_letters is None:
            dead_letters = await self.broker.dead_letters()
        async with engine.connect() as connection:
            coupon_rows = (
                await connection.execute(
                    select(
                        tables.coupon.c.id,
                        tables.coupon.c.code,
                        tables.coupon.c.init_count,
                        tables.coupon.c.remaining_count,
                    )
                )
            ).all()
            processed_rows = (
                await connection.execute(
                    select(
                        tables.processed_command.c.message_id,
                        tables.processed_command.c.outcome_type,
                        tables.processed_command.c.outcome_body,
                    )
                )
            ).all()
        report = LedgerReport(sent=self.sent, commands=len(self.commands))
        problems = report.problems
        report.coupons = len(coupon_rows)
        report.redemptions = sum(row.init_count - row.remaining_count for row in coupon_rows)
        report.processed_rows = len(processed_rows)
        report.event_copies = len(self.copies)
        report.outcomes = len(self.by_causation)
        report.duplicates = report.event_copies - report.outcomes
        report.dead_lettered = len(dead_letters)

        # Events: one distinct outcome per command, and only for commands that were sent.
        outcome_of: dict[str, ReceivedCopy] = {}
        kinds: Counter[str] = Counter()
        for copy in self.copies:
            if copy.causation_id is None:
                problems.append(f"event {copy.message_id} without causation_id")
        for causation, copies in self.by_causation.items():
            first = copies[0]
            outcome_of[causation] = first
            command = self.commands.get(causation)
            if command is None:
                problems.append(f"event for unknown command {causation}")
            elif command.expect is not Expect.OUTCOME:
                problems.append(f"event for {causation}, which expected {command.expect}")
            variants = {(c.message_id, c.routing_key, c.body) for c in copies}
            if len(variants) > 1:
                report.doubled += 1
                problems.append(
                    f"{len(variants)} distinct outcomes for command {causation}: "
                    + ", ".join(sorted(f"{m}/{k}" for m, k, _ in variants))
                )
            kinds[_kind(first)] += 1
        report.outcome_kinds = dict(kinds)

        # Dead letters: exactly the expected ones, once each, with the expected reason.
        dead_by_id: dict[str, list[AbstractIncomingMessage]] = defaultdict(list)
        for message in dead_letters:
            dead_by_id[str(message.message_id)].append(message)
        for message_id, letters in dead_by_id.items():
            command = self.commands.get(message_id)
            if command is None or command.expect is not Expect.DEAD_LETTER:
                problems.append(
                    f"dead-lettered {message_id} ({_reason(letters[0])}), "
                    f"expected {command.expect if command else 'an unknown command'}"
                )
            elif len(letters) > 1:
                report.doubled += 1
                problems.append(f"{message_id} dead-lettered {len(letters)} times")
            elif command.error is not None and _reason(letters[0]) != command.error:
                reason = _reason(letters[0])
                problems.append(f"{message_id} dead-lettered with {reason}, not {command.error}")

        # Lost: a command whose outcome or dead letter never came.
        for command in self.commands.values():
            if command.expect is Expect.OUTCOME and command.message_id not in outcome_of:
                report.lost += 1
                problems.append(f"lost: {command.routing_key} {command.message_id}")
            elif command.expect is Expect.DEAD_LETTER and command.message_id not in dead_by_id:
                report.lost += 1
                problems.append(f"lost: dead letter {command.message_id} never arrived")

        # processed_command: one row per applied command, holding the published outcome.
        rows = {row.message_id: row for row in processed_rows}
        for message_id, row in rows.items():
            command = self.commands.get(message_id)
            if command is None or command.expect is not Expect.OUTCOME:
                problems.append(f"processed_command row for unexpected {message_id}")
                continue
            event = outcome_of.get(message_id)
            if event is not None and (
                row.outcome_type != event.routing_key
                or json.loads(row.outcome_body) != json.loads(event.body)
            ):
                problems.append(f"processed_command row of {message_id} differs from its event")
        for command in self.expected(Expect.OUTCOME):
            if command.message_id not in rows:
                problems.append(f"no processed_command row for {command.message_id}")

        # Effects: each coupon created once, each redemption once, each with its event.
        self._check_effects(coupon_rows, outcome_of, report)
        # Outcomes: each the right one, by a model of the rules that reads only the commands.
        wrong = check_outcomes(self.commands.values(), outcome_of, coupon_rows)
        report.wrong = len(wrong)
        problems += wrong
        return report

    def _check_effects(
        self, coupon_rows: Iterable[Any], outcome_of: dict[str, ReceivedCopy], report: LedgerReport
    ) -> None:
        problems = report.problems
        created: dict[str, list[dict[str, Any]]] = defaultdict(list)
        redeemed: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for copy in outcome_of.values():
            body = json.loads(copy.body)
            if copy.routing_key == names.CREATED:
                created[body["code"]].append(body)
            elif copy.routing_key == names.REDEEMED:
                redeemed[body["code"]].append(body)
        created_codes = {
            c.code for c in self.commands.values() if c.routing_key == names.CREATE and c.code
        }
        rows_by_code = {row.code: row for row in coupon_rows}
        for code, row in rows_by_code.items():
            if code not in created_codes:
                problems.append(f"coupon {code!r} that no recorded command created")
            births = created.get(code, [])
            if len(births) != 1:
                report.doubled += max(len(births) - 1, 0)
                problems.append(f"coupon {code!r} has {len(births)} distinct coupon.created events")
            elif births[0]["id"] != str(row.id) or births[0]["init_count"] != row.init_count:
                problems.append(f"coupon {code!r}: its coupon.created event differs from the row")
            used = row.init_count - row.remaining_count
            counts = sorted(body["remaining_count"] for body in redeemed.get(code, []))
            if len(counts) != used:
                report.doubled += abs(len(counts) - used)
                problems.append(
                    f"coupon {code!r}: init_count - remaining_count = {used}, "
                    f"but {len(counts)} distinct coupon.redeemed events"
                )
            elif counts != list(range(row.remaining_count, row.init_count)):
                report.doubled += 1
                problems.append(
                    f"coupon {code!r}: coupon.redeemed remaining counts are not each once"
                )
        for code in set(created) - set(rows_by_code):
            problems.append(f"coupon.created for {code!r}, which has no row")
        for code in set(redeemed) - set(rows_by_code):
            problems.append(f"coupon.redeemed for {code!r}, which has no row")


class SteadyFlow:
    """A steady stream of commands through a `Ledger`, in bursts of `burst` every `pause`
    seconds, until `stop()`. A publish the broker did not confirm (it is away, or closed the
    connection) is retried with the same message_id until it is confirmed, as a careful
    client would; the worker de-duplicates what the broker did take twice."""

    def __init__(
        self,
        ledger: Ledger,
        make: Callable[[int], Command],
        *,
        burst: int = 10,
        pause: float = 0.05,
    ) -> None:
        self.ledger = ledger
        self.make = make
        self.burst = burst
        self.pause = pause
        self.count = 0
        self.retries = 0
        self.last_sent: tuple[str, float] = ("", 0.0)  # (message_id, time.monotonic())
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _send(self, command: Command) -> None:
        message_id = str(uuid.uuid4())
        while True:
            try:
                async with asyncio.timeout(5):
                    await self.ledger.send(command, message_id=message_id)
            except Exception:  # the broker is away: the same command again, later
                self.retries += 1
                await asyncio.sleep(0.5)
                continue
            self.last_sent = (message_id, time.monotonic())
            return

    def _next(self) -> Command:
        self.count += 1
        return self.make(self.count)

    async def _run(self) -> None:
        while not self._stop.is_set():
            await asyncio.gather(*(self._send(self._next()) for _ in range(self.burst)))
            await asyncio.sleep(self.pause)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="steady-flow")

    async def stop(self, within: float = 60.0) -> None:
        self._stop.set()
        assert self._task is not None, "start() first"
        await asyncio.wait_for(self._task, within)

    async def first_outcome_after(self, moment: float, within: float) -> float:
        """Seconds from `moment` (time.monotonic()) until a command sent after it has its
        outcome: how long the system took to work again after an outage ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.last_sent[1] <= moment:
            assert self._task is not None and not self._task.done(), "the flow stopped"
            assert loop.time() < deadline, f"no command could be sent within {within}s"
            await asyncio.sleep(0.05)
        await self.ledger.wait_for(self.last_sent[0], within=max(deadline - loop.time(), 0.1))
        return time.monotonic() - moment


def _copy_of(message: AbstractIncomingMessage) -> ReceivedCopy:
    causation = (message.headers or {}).get(names.CAUSATION_ID_HEADER)
    if isinstance(causation, bytes):
        causation = causation.decode()
    return ReceivedCopy(
        causation_id=str(causation) if causation is not None else None,
        message_id=message.message_id,
        routing_key=message.type or message.routing_key or "",
        body=message.body,
    )


def _kind(copy: ReceivedCopy) -> str:
    if copy.routing_key == names.ERROR:
        try:
            return str(json.loads(copy.body).get("error"))
        except ValueError:
            return "error?"
    return copy.routing_key.removeprefix("coupon.")


def dead_letter_reason(message: AbstractIncomingMessage) -> str:
    """The `x-error` the worker gave, or the broker's reason (e.g. `delivery_limit`)."""
    headers = message.headers or {}
    error = headers.get(names.ERROR_HEADER)
    if error is not None:
        return error.decode() if isinstance(error, bytes) else str(error)
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        reason = deaths[0].get("reason")
        return reason.decode() if isinstance(reason, bytes) else str(reason)
    return "no reason"


_reason = dead_letter_reason  # the name the first users imported
