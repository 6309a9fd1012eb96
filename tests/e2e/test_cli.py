"""The `coupon-worker` command line, run as a user runs it (a separate process, JSON lines when
its output is not a terminal), against a worker process."""

from __future__ import annotations

import asyncio
import json
from importlib.metadata import version

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import RedeemCoupon
from contracts.names import CONTRACT_VERSION
from tests.conftest import StartWorker
from tests.e2e.observe import coupons, flush
from tests.support.broker import Broker
from tests.support.cli import Finished, finish, run_cli, start_cli
from tests.support.services import Services
from worker.entrypoints.environment import variable_name
from worker.settings import Settings

EVENTS_LIMIT = 3


@pytest.fixture
def cli_env(services: Services, database_url: str, prefix: str) -> dict[str, str]:
    return {
        "AMQP_URL": services.amqp_url,
        "DATABASE_URL": database_url,
        "WORKER_NAME_PREFIX": prefix,
    }


async def start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await start_cli(*args, env=env)


async def run(env: dict[str, str], *args: str) -> Finished:
    return await run_cli(*args, env=env)


@pytest.mark.timeout(120)
async def test_publish_and_events_as_a_user_runs_them(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine, cli_env: dict[str, str]
) -> None:
    events = await broker.collect_events()
    worker = start_worker()
    following = await start(cli_env, "events", "--limit", str(EVENTS_LIMIT))
    await worker.wait_ready()

    try:
        created, missing, usage = await asyncio.gather(
            run(cli_env, "publish", "create", "--code", "CLI-X", "--init-count", "3", "--wait"),
            run(cli_env, "publish", "redeem", "--code", "NOPE", "--wait"),
            run(cli_env, "publish", "redeem", "--help"),
        )
        assert created.returncode == 0, created
        [record] = created.records()
        assert record["event"] == "coupon.created"
        assert (record["code"], record["init_count"], record["remaining_count"]) == ("CLI-X", 3, 3)
        assert record["message_id"] and record["correlation_id"]

        # A business error is an answer, not a crash: its own exit status, documented in --help.
        assert missing.returncode == 1, missing
        [record] = missing.records()
        assert (record["event"], record["error"], record["code"]) == (
            "coupon.error",
            "DoesNotExist",
            "NOPE",
        )
        assert "Traceback" not in missing.stderr
        assert usage.returncode == 0
        assert "1  the outcome was coupon.error" in usage.stdout

        # `events` follows from the moment it subscribed: feed it until it has seen its limit.
        exited = asyncio.ensure_future(following.wait())
        deadline = asyncio.get_running_loop().time() + 60
        while not exited.done():
            assert asyncio.get_running_loop().time() < deadline, "`events` never printed its limit"
            await broker.send(RedeemCoupon(code="CLI-X"))
            await asyncio.wait({exited}, timeout=0.5)
        followed = await finish(following)
        await flush(broker, events)
        assert followed.returncode == 0, followed
        printed = followed.records()
        assert len(printed) == EVENTS_LIMIT
        # Every line is one event as the broker carried it.
        carried = {m.message_id: m for m in events.messages}
        for line in printed:
            message = carried[line["message_id"]]
            assert line["event"] == message.routing_key
            assert {
                k: v for k, v in line.items() if k not in ("event", "message_id", "correlation_id")
            } == json.loads(message.body)
        assert (await coupons(db))["CLI-X"][0] == 3
    finally:
        if following.returncode is None:
            following.kill()
            await following.wait()


async def test_schema_prints_the_contract_as_json_schema(cli_env: dict[str, str]) -> None:
    printed = await run(cli_env, "schema")
    assert printed.returncode == 0, printed
    schema = json.loads(printed.stdout)
    assert {"CreateCoupon", "RedeemCoupon", "GetCoupon", "CouponCreated", "CouponError"} <= set(
        schema["$defs"]
    )
    assert set(schema["commands"]) == {"coupon.create", "coupon.redeem", "coupon.get"}
    create = schema["$defs"]["CreateCoupon"]
    assert create["additionalProperties"] is False
    assert set(create["required"]) == {"code", "init_count"}


async def test_version_names_the_package_and_the_contract() -> None:
    printed = await run_cli("--version")
    assert printed.returncode == 0, printed
    assert printed.stdout.strip() == (
        f"coupon-worker {version('coupon-worker')} (wire contract v{CONTRACT_VERSION})"
    )


async def test_run_help_lists_the_environment_it_reads() -> None:
    printed = await run_cli("run", "--help")
    assert printed.returncode == 0, printed
    for field in Settings.model_fields:
        assert f"\n  {variable_name(field)}  (default: " in printed.stdout, field
    assert "  WORKER_PREFETCH  (default: 500)" in printed.stdout


async def test_an_invalid_variable_is_named_as_it_is_set() -> None:
    printed = await run_cli("run", WORKER_PREFETCH="many")
    assert printed.returncode == 2, printed
    assert printed.stderr.splitlines() == [
        "coupon-worker: invalid configuration:",
        "  WORKER_PREFETCH: Input should be a valid integer, unable to parse string as an integer",
    ]
