"""`coupon-worker dead-letters`, run as an operator runs it, against worker processes: failed and
invalid commands land in coupon.worker.dead; `list` and `show` report them with their reasons;
`redrive` sends the repaired ones back, each applied once; an interrupted re-drive run again
loses and doubles nothing; invalid letters are refused unless forced; `purge` needs --yes."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

import aio_pika
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon
from contracts.messages import command_message
from tests.conftest import StartWorker
from tests.e2e.observe import coupons, flush, processed
from tests.e2e.test_cli import cli_env as cli_env  # the fixture, shared
from tests.e2e.test_cli import run, start
from tests.support.broker import Broker
from tests.support.cli import Finished

FAILING = ("fault-dl-1", "fault-dl-2", "fault-dl-3")


async def _wait_depth(broker: Broker, count: int, within: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (depth := await broker.depth(broker.topology.dead_queue)) != count:
        assert loop.time() < deadline, f"{depth} letters in the dead-letter queue, not {count}"
        await asyncio.sleep(0.1)


def _letters(ran: Finished) -> dict[str, dict[str, object]]:
    assert ran.returncode == 0, ran
    return {str(record["message_id"]): record for record in ran.records()}


@pytest.mark.timeout(180)
async def test_list_show_redrive_and_purge_the_dead_letters_of_a_worker(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine, cli_env: dict[str, str]
) -> None:
    events = await broker.collect_events()
    faulty = start_worker(
        worker_max_attempts="1",
        worker_fault_plan=",".join(f"handle:raise:{code}" for code in FAILING),
    )
    await faulty.wait_ready()
    failed = [await broker.send(CreateCoupon(code=code, init_count=2)) for code in FAILING]
    not_json = await broker.send_raw("coupon.redeem", b"{not json")
    unknown = await broker.send_raw("coupon.cancel", b'{"code": "X"}')
    await _wait_depth(broker, 5)

    listed = _letters(await run(cli_env, "dead-letters", "list"))
    assert set(listed) == {*failed, not_json, unknown}
    assert {listed[m]["error"] for m in failed} == {"ProcessingFailed"}
    assert listed[not_json]["error"] == "InvalidJson"
    assert listed[unknown]["error"] == "UnknownCommand"
    assert all(record["deaths"] == 1 and record["first_death_at"] for record in listed.values())
    assert "InjectedFault" in str(listed[failed[0]]["detail"])
    only_failed = _letters(
        await run(cli_env, "dead-letters", "list", "--error", "ProcessingFailed")
    )
    assert set(only_failed) == set(failed)
    by_key = _letters(await run(cli_env, "dead-letters", "list", "--routing-key", "coupon.cancel"))
    assert set(by_key) == {unknown}
    assert not _letters(await run(cli_env, "dead-letters", "list", "--older-than", "1h"))

    shown = await run(cli_env, "dead-letters", "show", failed[1])
    assert shown.returncode == 0, shown
    [letter] = shown.records()
    assert json.loads(letter["body"]) == {"code": FAILING[1], "init_count": 2}
    assert letter["properties"]["message_id"] == failed[1]
    assert letter["properties"]["content_type"] == "application/json"
    assert letter["headers"]["x-error"] == "ProcessingFailed"
    missing = await run(cli_env, "dead-letters", "show", "no-such-letter")
    assert missing.returncode == 1 and "no letter" in missing.stderr
    # Reading takes nothing away.
    assert await broker.depth(broker.topology.dead_queue) == 5

    # Repaired: the worker runs without the fault now.
    assert await faulty.stop() == 0
    await start_worker(name="repaired").wait_ready()
    dry = _letters(await run(cli_env, "dead-letters", "redrive", "--dry-run"))
    assert {m: r["result"] for m, r in dry.items()} == {
        **dict.fromkeys(failed, "would_redrive"),
        not_json: "refused",
        unknown: "refused",
    }
    assert await broker.depth(broker.topology.dead_queue) == 5
    redriven = _letters(await run(cli_env, "dead-letters", "redrive"))
    assert {m for m, r in redriven.items() if r["result"] == "redriven"} == set(failed)
    await _wait_depth(broker, 2)
    await events.wait_until(
        lambda ms: {m.headers.get("causation_id") for m in ms} >= set(failed), 60, "3 outcomes"
    )
    await flush(broker, events)
    assert {code: v for code, v in (await coupons(db)).items() if code in FAILING} == dict.fromkeys(
        FAILING, (2, 2)
    )
    outcomes = [m for m in events.messages if m.headers.get("causation_id") in failed]
    assert sorted(str(m.headers["causation_id"]) for m in outcomes) == sorted(failed)
    assert {m.routing_key for m in outcomes} == {"coupon.created"}

    purge_refused = await run(cli_env, "dead-letters", "purge", "--error", "InvalidJson")
    assert purge_refused.returncode == 2 and "--yes" in purge_refused.stderr
    purged = _letters(
        await run(cli_env, "dead-letters", "purge", "--error", "InvalidJson", "--yes")
    )
    assert {m: r["result"] for m, r in purged.items()} == {not_json: "purged"}
    await _wait_depth(broker, 1)
    left = _letters(await run(cli_env, "dead-letters", "list"))
    assert set(left) == {unknown}


LETTERS = 300
KILL_AFTER = 60


async def _dead_letter_directly(broker: Broker, code: str, count: int) -> list[str]:
    """`count` redeems of `code`, in coupon.worker.dead as the worker leaves a failed command."""
    dead = await broker.ch.get_exchange(broker.topology.dead_exchange, ensure=False)
    sent = []
    for _ in range(count):
        message = command_message(RedeemCoupon(code=code), message_id=str(uuid.uuid4()))
        await dead.publish(
            aio_pika.Message(
                message.body,
                message_id=message.message_id,
                content_type=message.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={"x-error": "ProcessingFailed", "x-error-detail": "failed 5 times"},
            ),
            routing_key=message.routing_key,
        )
        sent.append(message.message_id)
    return sent


@pytest.mark.timeout(240)
async def test_a_redrive_killed_half_way_and_run_again_loses_and_doubles_nothing(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine, cli_env: dict[str, str]
) -> None:
    code = f"redrive-{uuid.uuid4().hex[:6]}"
    await broker.send(CreateCoupon(code=code, init_count=1000))
    worker = start_worker()
    await worker.wait_ready()
    letters = await _dead_letter_directly(broker, code, LETTERS)
    await _wait_depth(broker, LETTERS)

    # The first run is SIGKILLed after it reported KILL_AFTER letters re-driven.
    first = await start(cli_env, "dead-letters", "redrive")
    assert first.stdout is not None
    reported = 0
    while reported < KILL_AFTER:
        line = await asyncio.wait_for(first.stdout.readline(), 60)
        assert line, "the re-drive ended before it could be interrupted"
        reported += json.loads(line)["result"] == "redriven"
    first.send_signal(signal.SIGKILL)
    await first.wait()
    await asyncio.sleep(1)  # the broker returns what the dead connection held
    left = await broker.depth(broker.topology.dead_queue)
    assert 0 < left <= LETTERS - KILL_AFTER, f"{left} letters left: not interrupted half-way"

    again = _letters(await run(cli_env, "dead-letters", "redrive"))
    assert {r["result"] for r in again.values()} == {"redriven"}
    assert len(again) == left
    await _wait_depth(broker, 0)

    # Every letter applied once: 300 redeems took exactly 300 of 1000, one stored outcome each.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    while set(letters) - set(await processed(db)):
        assert loop.time() < deadline, "not every re-driven redeem was processed"
        await asyncio.sleep(0.2)
    assert (await coupons(db))[code] == (1000, 1000 - LETTERS)
    stored = await processed(db)
    assert all(stored[m] == "coupon.redeemed" for m in letters)
    assert worker.running()
    redriven_twice = LETTERS - KILL_AFTER - left
    print(  # noqa: T201 - the test's figures
        f"FIGURES redrive killed after {KILL_AFTER} reported: {left} left, "
        f"{redriven_twice} re-driven twice, remaining {LETTERS} applied once"
    )


async def test_a_letter_the_broker_cannot_route_stays_in_the_queue(
    broker: Broker, cli_env: dict[str, str]
) -> None:
    dead = await broker.ch.get_exchange(broker.topology.dead_exchange, ensure=False)
    await dead.publish(
        aio_pika.Message(
            b'{"code": "X"}',
            message_id="unroutable",
            headers={"x-error": "ProcessingFailed", "x-error-detail": "failed"},
        ),
        routing_key="billing.refund",  # not bound to the worker's queue (coupon.*)
    )
    await _wait_depth(broker, 1)
    refused = await run(cli_env, "dead-letters", "redrive")
    assert refused.returncode == 2, refused
    assert "did not take a re-driven letter" in refused.stderr and "0 re-driven" in refused.stderr
    assert "Traceback" not in refused.stderr
    await asyncio.sleep(1)
    assert [m.message_id for m in await broker.dead_letters()] == ["unroutable"]
