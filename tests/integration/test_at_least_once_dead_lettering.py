"""Contract v1.1: what the broker dead-letters itself is not lost, even while the dead-letter
queue is full; a queue declared under v1 gets a start-up error that says how to migrate, and
the policy it names gives the same guarantee.

RabbitMQ retries a dead letter that the target queue rejected after its
`dead_letter_worker_publisher_confirm_timeout` (180 s by default), read when a queue's
dead-letter worker starts: the module shortens it for the queues its tests declare, and puts
the default back afterwards.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest

from contracts.names import Topology
from tests.support.broker import Broker
from tests.support.outages import _require_local, _run
from tests.support.services import Services
from worker.messaging import topology as worker_topology
from worker.messaging.topology import TopologyError
from worker.settings import Settings

DELIVERY_LIMIT = 2
RETRY_SETTING = "dead_letter_worker_publisher_confirm_timeout"


@pytest.fixture(params=["arguments", "policy"])
def strategy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(services: Services, database_url: str, prefix: str, strategy: str) -> Settings:
    return Settings.model_validate(
        {
            "AMQP_URL": services.amqp_url,
            "DATABASE_URL": database_url,
            "name_prefix": prefix,
            "delivery_limit": DELIVERY_LIMIT,
            "dead_lettering_by_policy": strategy == "policy",
        }
    )


async def _rabbitmqctl(*argv: str) -> str:
    return await _run("rabbitmqctl", *argv)


@pytest.fixture
async def quick_retries(services: Services) -> AsyncIterator[None]:
    """Requested before `broker`, so the queues it declares start with a 1 s retry."""
    _require_local(services.amqp_url, "rabbitmqctl", "RabbitMQ's dead-letter retry interval")
    before = await _rabbitmqctl("eval", f"application:get_env(rabbit, {RETRY_SETTING}).")
    await _rabbitmqctl("eval", f"application:set_env(rabbit, {RETRY_SETTING}, 1000).")
    yield
    default = before.removeprefix("{ok,").removesuffix("}") if before.startswith("{ok,") else ""
    await _rabbitmqctl(
        "eval", f"application:set_env(rabbit, {RETRY_SETTING}, {default or 180000})."
    )


@pytest.fixture
def policy(services: Services, prefix: str, strategy: str) -> Iterator[str]:
    name = f"{prefix}dead-lettering"
    yield name
    if strategy == "policy":
        subprocess.run(["rabbitmqctl", "clear_policy", name], timeout=60, check=False)


async def _apply_advised_policy(topology: Topology, name: str) -> None:
    """The policy of the migration advice, verbatim but for its name."""
    advice = worker_topology.migration_advice(topology)
    command = advice.split("`rabbitmqctl set_policy ", 1)[1].split("`", 1)[0]
    pattern, definition = command.split("'")[1], command.split("'")[3]
    await _rabbitmqctl(
        "set_policy", "--apply-to", "queues", "--priority", "10", name, pattern, definition
    )


async def _full_dead_letter_queue(broker: Broker) -> int:
    """coupon.worker.dead re-declared with a length limit, and filled until it refuses a letter
    (a quorum queue notices it is over its limit one message late); returns its depth."""
    channel = broker.ch
    topology = broker.topology
    await channel.queue_delete(topology.dead_queue)
    dead_queue = await channel.declare_queue(
        topology.dead_queue,
        durable=True,
        arguments={"x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish"},
    )
    await dead_queue.bind(topology.dead_exchange, routing_key="")
    dead = await channel.get_exchange(topology.dead_exchange, ensure=False)
    for _ in range(5):
        try:
            await dead.publish(aio_pika.Message(b"{}", message_id="filler"), "coupon.redeem")
        except aio_pika.exceptions.DeliveryError:
            return await broker.depth(topology.dead_queue)
    raise AssertionError("the dead-letter queue never refused a letter")


async def _exhaust_delivery_limit(broker: Broker, message_id: str) -> int:
    """Take the command from coupon.worker and return it until the broker stops offering it;
    returns how many times it was delivered."""
    queue = await broker.ch.get_queue(broker.topology.worker_queue, ensure=False)
    deliveries = 0
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while loop.time() - quiet_since < 2.0:
        message = await queue.get(fail=False, no_ack=False)
        if message is None:
            await asyncio.sleep(0.1)
            continue
        assert message.message_id == message_id
        deliveries += 1
        assert deliveries <= DELIVERY_LIMIT + 1, "the delivery limit is not enforced"
        await message.nack(requeue=True)
        quiet_since = loop.time()
    return deliveries


@pytest.mark.timeout(120)
async def test_a_letter_the_broker_dead_letters_waits_while_the_dead_letter_queue_is_full(
    quick_retries: None, strategy: str, policy: str, broker: Broker
) -> None:
    if strategy == "policy":
        await _apply_advised_policy(broker.topology, policy)
    full = await _full_dead_letter_queue(broker)
    poison = await broker.send_raw("coupon.redeem", b'{"code": "poison"}')

    assert await _exhaust_delivery_limit(broker, poison) == DELIVERY_LIMIT + 1
    await asyncio.sleep(2.5)  # two retries of the broker's: both refused by the full queue
    assert await broker.depth(broker.topology.dead_queue) == full
    assert [m.message_id for m in await broker.dead_letters()] == ["filler"] * full

    # Room again: the broker's next retry delivers the letter it kept.
    letters = await broker.wait_dead_letters(1, within=30)
    assert [letter.message_id for letter in letters] == [poison]
    headers = letters[0].headers or {}
    assert headers.get("x-first-death-reason") == "delivery_limit", headers
    assert letters[0].routing_key == "coupon.redeem"
    assert await broker.depth(broker.topology.worker_queue) == 0


async def test_a_queue_declared_under_v1_stops_the_start_with_how_to_migrate(
    services: Services, settings: Settings
) -> None:
    topology = Topology(f"t{uuid.uuid4().hex[:10]}-")
    v1 = settings.model_copy(update={"dead_lettering_by_policy": True})
    v1_1 = settings.model_copy(update={"dead_lettering_by_policy": False})
    connection = await aio_pika.connect(services.amqp_url)
    try:
        await worker_topology.declare(await connection.channel(), topology, v1)
        with pytest.raises(TopologyError) as raised:
            await worker_topology.declare(await connection.channel(), topology, v1_1)
        message = str(raised.value)
        assert f"queue {topology.worker_queue!r} was declared under contract v1" in message
        assert "rabbitmqctl set_policy" in message and "WORKER_DEAD_LETTERING_BY_POLICY" in message
        assert f"rabbitmqctl delete_queue {topology.worker_queue}" in message
        # What the advice says works: with the setting, the same queue is accepted.
        await worker_topology.declare(await connection.channel(), topology, v1)
    finally:
        channel = await connection.channel()
        for queue in (topology.worker_queue, topology.dead_queue):
            await channel.queue_delete(queue)
        for exchange in (
            topology.commands_exchange,
            topology.events_exchange,
            topology.dead_exchange,
        ):
            await channel.exchange_delete(exchange)
        await connection.close()
