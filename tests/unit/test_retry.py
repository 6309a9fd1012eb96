"""The retry policy on its own: what is retried, how soon, how often, and in what shape."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import pytest

from worker.app.failures import DependencyUnavailable, TransactionConflict
from worker.messaging.retry import GaveUp, RetryPolicy, Verdict


class Script:
    """An attempt on strings: fails with the next scripted error, or for an item in `bad`;
    records every attempt, verdict (success, give-up) and wait."""

    def __init__(self, *failures: Exception, bad: Sequence[str] = ()) -> None:
        self.failures = list(failures)
        self.bad = set(bad)
        self.attempts: list[list[str]] = []
        self.succeeded_with: list[list[str]] = []
        self.given_up: list[tuple[str, int, str]] = []
        self.scopes: list[str] = []
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def attempt(self, items: Sequence[str]) -> str:
        self.attempts.append(list(items))
        if self.failures:
            raise self.failures.pop(0)
        if self.bad.intersection(items):
            raise ValueError(f"bad {sorted(self.bad.intersection(items))}")
        return "+".join(items)

    def heard(self, verdict: Verdict[str, str]) -> None:
        if isinstance(verdict, GaveUp):
            self.given_up.append((verdict.item, verdict.attempts, str(verdict.error)))
        else:
            assert verdict.result == "+".join(verdict.items)
            self.succeeded_with.append(list(verdict.items))

    @contextmanager
    def alone(self, item: str) -> Iterator[None]:
        self.scopes.append(item)
        yield


async def drive(retry: RetryPolicy, items: Sequence[str], script: Script) -> None:
    """Run `items` under `retry` with the script's attempts, hearing every verdict."""
    async for verdict in retry.run(items, attempt=script.attempt, alone=script.alone):
        script.heard(verdict)


def policy(
    script: Script,
    *,
    max_attempts: int = 5,
    attempt_backoff: float = 0.1,
    outage_backoff: float = 0.1,
    outage_backoff_max: float = 5.0,
    conflict_jitter: float = 0.02,
) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts,
        attempt_backoff=attempt_backoff,
        outage_backoff=outage_backoff,
        outage_backoff_max=outage_backoff_max,
        conflict_jitter=conflict_jitter,
        sleep=script.sleep,
    )


async def test_an_outage_is_waited_out_with_a_doubling_capped_back_off() -> None:
    script = Script(*[DependencyUnavailable("down")] * 6)
    await drive(policy(script, outage_backoff=0.1, outage_backoff_max=0.5), ["a", "b"], script)
    assert script.waits == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])
    assert script.attempts == [["a", "b"]] * 7, "held together, never split"
    assert script.succeeded_with == [["a", "b"]] and script.given_up == []


async def test_an_outage_never_uses_up_the_attempts() -> None:
    script = Script(*[DependencyUnavailable("down")] * 20)
    await drive(policy(script, max_attempts=2), ["a"], script)
    assert script.succeeded_with == [["a"]] and script.given_up == []


async def test_a_conflict_is_retried_at_once_with_a_little_jitter() -> None:
    script = Script(TransactionConflict("lost"), TransactionConflict("lost again"))
    await drive(policy(script, conflict_jitter=0.02), ["a", "b"], script)
    assert len(script.waits) == 2 and all(0 <= wait <= 0.02 for wait in script.waits)
    assert script.succeeded_with == [["a", "b"]]


async def test_a_failed_batch_is_split_and_each_command_retried_alone() -> None:
    script = Script(bad=["b"])
    await drive(policy(script, max_attempts=3, attempt_backoff=0.1), ["a", "b", "c"], script)
    assert script.attempts == [["a", "b", "c"], ["a"], ["b"], ["b"], ["b"], ["c"]]
    assert script.succeeded_with == [["a"], ["c"]]
    assert script.given_up == [("b", 3, "bad ['b']")]
    assert script.waits == pytest.approx([0.2, 0.4])  # before the 2nd and the 3rd try of b
    assert script.scopes == ["a", "b", "c"], "each command alone binds its own log context"


async def test_verdicts_come_as_each_command_is_decided_not_at_the_end() -> None:
    """The caller publishes and settles a command as soon as its verdict comes: a split
    batch's first command is answered before the next one is tried."""
    script = Script(bad=["b"])
    retry = policy(script, max_attempts=2)
    verdicts = retry.run(["a", "b", "c"], attempt=script.attempt, alone=script.alone)
    first = await anext(verdicts)
    assert not isinstance(first, GaveUp) and list(first.items) == ["a"]
    assert script.attempts == [["a", "b", "c"], ["a"]], "b not tried yet"
    second = await anext(verdicts)
    assert isinstance(second, GaveUp) and second.item == "b" and second.attempts == 2
    assert script.scopes == ["a", "b"], "b's verdict is heard inside its own log context"
    await verdicts.aclose()


async def test_a_command_that_recovers_within_its_attempts_succeeds() -> None:
    script = Script(RuntimeError("once"), RuntimeError("twice"))
    await drive(policy(script, max_attempts=3), ["a"], script)
    assert script.succeeded_with == [["a"]] and script.given_up == []
    assert len(script.attempts) == 3


def test_the_settings_give_the_attempts_and_the_outage_back_off_cap() -> None:
    from worker.settings import Settings

    settings = Settings.model_validate({"max_attempts": 7, "retry_max_backoff": 2.5})
    retry = RetryPolicy.from_settings(settings)
    assert (retry.max_attempts, retry.outage_backoff_max) == (7, 2.5)


class Hanging(Script):
    """A Script whose first `hangs` attempts never finish (a database gone silent between
    statements, where no statement timeout runs)."""

    def __init__(self, hangs: int, *failures: Exception) -> None:
        super().__init__(*failures)
        self.hangs = hangs

    async def attempt(self, items: Sequence[str]) -> str:
        if self.hangs:
            self.hangs -= 1
            self.attempts.append(list(items))
            await asyncio.Event().wait()
        return await super().attempt(items)


async def test_an_attempt_past_its_deadline_is_an_outage_the_batch_is_held() -> None:
    script = Hanging(2)
    # deadline: 2 x 0.01 + 0.05 a command = 0.12 s
    retry = replace(policy(script, max_attempts=1), statement_timeout=0.01)
    await asyncio.wait_for(drive(retry, ["a", "b"], script), timeout=30)
    assert script.attempts == [["a", "b"]] * 3, "held together, never split"
    assert script.waits == pytest.approx([0.1, 0.2]), "waited out as an outage"
    assert script.succeeded_with == [["a", "b"]] and script.given_up == []


async def test_a_timeout_within_the_deadline_is_not_taken_for_an_outage() -> None:
    script = Script(TimeoutError("raised by the work, not the deadline"))
    retry = replace(policy(script, max_attempts=1), statement_timeout=5.0)
    await drive(retry, ["a"], script)
    assert script.given_up == [("a", 1, "raised by the work, not the deadline")]


def test_the_settings_give_each_attempt_a_deadline() -> None:
    from worker.settings import Settings

    settings = Settings.model_validate({"db_statement_timeout": 2.0})
    assert RetryPolicy.from_settings(settings).statement_timeout == 2.0
    assert RetryPolicy().statement_timeout is None


async def test_every_try_again_is_told_to_the_observer_with_its_reason() -> None:
    """What `coupon_worker_retries_total{reason}` counts: one per wait of an outage, one per
    conflict, one per split batch, one per further try of a failing command; none for a first
    try or for giving up."""
    from collections import Counter

    from worker.messaging.retry import RETRY_REASONS, RetryReason

    heard: Counter[RetryReason] = Counter()

    def hear(reason: RetryReason) -> None:
        heard[reason] += 1

    script = Script(
        DependencyUnavailable("down"),
        DependencyUnavailable("still down"),
        TransactionConflict("lost"),
        bad=["b"],
    )
    observed = replace(policy(script, max_attempts=3), on_retry=hear)
    await drive(observed, ["a", "b"], script)
    assert heard == {
        "dependency_unavailable": 2,
        "transaction_conflict": 1,
        "batch_split": 1,
        "command_failed": 2,  # b's 2nd and 3rd tries; then it is given up on
    }
    assert set(RETRY_REASONS) == set(heard)
    assert script.given_up == [("b", 3, "bad ['b']")]
