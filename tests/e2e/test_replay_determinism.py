"""Record ≥ 500 mixed commands with `coupon-worker record`, replay the file into a fresh worker
and database twice (the plugin's real backend), and compare: the contract's "Determinism"."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from contracts import CreateCoupon, GetCoupon, RedeemCoupon, names
from contracts.testing import ReplayOutcome
from contracts.testing.backends import MemoryBackend, RealBackend
from tests.e2e.test_cli import cli_env
from tests.e2e.test_record_replay import start_recording
from tests.support.broker import Broker
from tests.support.cli import finish

__all__ = ["cli_env"]

Factory = Callable[[], AbstractAsyncContextManager[MemoryBackend | RealBackend]]
COUPONS = 40
UUID = re.compile(r'"id":"[0-9a-f-]{36}"')

# The scenario is run once and looked at by two tests: one that holds on this branch, one that
# needs the worker's deterministic coupon ids.
_results: dict[str, Any] = {}


@pytest.fixture
def coupon_backend_name() -> str:
    return "real"


async def _publish_mixed(broker: Broker, seed: int = 20261127) -> int:
    rng = random.Random(seed)
    codes = [f"DET-{n:02d}" for n in range(COUPONS)]
    count = 0
    resendable: list[tuple[str, str, bytes]] = []  # message_id, routing key, body

    async def send(command: Any, **options: Any) -> None:
        nonlocal count
        message_id = await broker.send(command, message_id=f"det-{count}", **options)
        count += 1
        if not command.is_read:
            resendable.append((message_id, command.routing_key, command.model_dump_json().encode()))

    for code in codes[:10]:
        await send(CreateCoupon(code=code, init_count=rng.randint(1, 8)))
    for step in range(490):
        roll = rng.random()
        code = rng.choice(codes)
        if step % 16 == 0 and 10 + step // 16 < COUPONS:
            await send(CreateCoupon(code=codes[10 + step // 16], init_count=rng.randint(1, 8)))
        elif roll < 0.66:
            await send(RedeemCoupon(code=code))
        elif roll < 0.71:
            await send(RedeemCoupon(code=f"NOPE-{rng.randint(0, 3)}"))
        elif roll < 0.77:
            await send(GetCoupon(code=code), reply_to="recorded-replies")
        elif roll < 0.80:
            await send(CreateCoupon(code=code, init_count=5))  # AlreadyExists, mostly
        elif roll < 0.95:
            # A command re-sent with its message_id: no second effect, the same outcome.
            message_id, routing_key, body = rng.choice(resendable)
            await broker.send_raw(routing_key, body, message_id=message_id)
            count += 1
        else:
            body = rng.choice([b"{oops", b'{"code": "X", "init_count": 0}', b"[]"])
            await broker.send_raw(names.CREATE, body, message_id=f"det-{count}")
            count += 1
    return count


async def _scenario(broker: Broker, env: dict[str, str], factory: Factory, path: Path) -> None:
    if _results:
        return
    recorder = await start_recording(env, str(path), "--pattern", "coupon.*", "--limit", "500")
    published = await _publish_mixed(broker)
    assert published == 500
    done = await finish(recorder, within=120)
    assert done.returncode == 0, done
    recorded = await asyncio.to_thread(path.read_bytes)
    assert len(recorded.splitlines()) == 500

    async with factory() as first:
        _results["first"] = await first.replay(path)
        _results["state"] = await _state(first, _results["first"])
        _results["again"] = await first.replay(path)  # the same ids into the same database
        _results["state_again"] = await _state(first, _results["first"])
    async with factory() as second:
        _results["second"] = await second.replay(path)


async def _state(backend: MemoryBackend | RealBackend, outcomes: list[ReplayOutcome]) -> Any:
    codes = {json.loads(o.body)["code"] for o in outcomes if o.routing_key == "coupon.created"}
    found = {}
    for code in sorted(codes):
        coupon = await backend.client.get(code)
        found[code] = (coupon.init_count, coupon.remaining_count)
    return found


def _without_coupon_ids(outcomes: list[ReplayOutcome]) -> list[str]:
    return [o.model_copy(update={"body": UUID.sub('"id":"-"', o.body)}).to_line() for o in outcomes]


@pytest.mark.timeout(600)
async def test_a_recorded_stream_replays_with_one_effect_per_command(
    broker: Broker, cli_env: dict[str, str], coupon_backend_factory: Factory, tmp_path: Path
) -> None:
    await _scenario(broker, cli_env, coupon_backend_factory, tmp_path / "mixed.jsonl")
    first, again, second = _results["first"], _results["again"], _results["second"]
    assert len(first) == len(second) == 500
    kinds = Counter(o.routing_key for o in first)
    assert kinds["coupon.created"] >= 30 and kinds["coupon.redeemed"] >= 100
    assert kinds["coupon.error"] >= 20 and kinds["coupon.invalid"] >= 5 and kinds["coupon.found"]
    # Into the same database again: no second effect, and every write answered from its stored
    # outcome, byte for byte (a `coupon.get` is answered fresh: it reads the state as it is now).
    assert _results["state_again"] == _results["state"]
    assert [o.to_line() for o in again if o.command != names.GET] == [
        o.to_line() for o in first if o.command != names.GET
    ]
    # Into a fresh database: the same outcomes, but for coupon ids until they are derived.
    assert _without_coupon_ids(second) == _without_coupon_ids(first)
    # One effect per command: each coupon's count is its init_count less its distinct redeems.
    redeemed: Counter[str] = Counter()
    seen: set[str | None] = set()
    for outcome in first:
        if outcome.routing_key == "coupon.redeemed" and outcome.command_message_id not in seen:
            redeemed[json.loads(outcome.body)["code"]] += 1
        seen.add(outcome.command_message_id)
    for code, (init_count, remaining) in _results["state"].items():
        assert remaining == init_count - redeemed[code] >= 0, code
    # A re-sent command gets the very outcome of its first sending.
    by_id: dict[str | None, str] = {}
    for outcome in first:
        if outcome.routing_key != "coupon.found":
            line = outcome.to_line()
            assert by_id.setdefault(outcome.command_message_id, line) == line


@pytest.mark.timeout(600)
async def test_two_fresh_replays_are_byte_identical(
    broker: Broker, cli_env: dict[str, str], coupon_backend_factory: Factory, tmp_path: Path
) -> None:
    """Needs coupon ids derived from the creating command's message_id (issue 9, item 1)."""
    await _scenario(broker, cli_env, coupon_backend_factory, tmp_path / "mixed.jsonl")
    first = [o.to_line() for o in _results["first"]]
    second = [o.to_line() for o in _results["second"]]
    assert first == second
