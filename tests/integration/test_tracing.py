"""A command sent with a W3C `traceparent` yields spans of that trace (receive, the batch's unit
of work and its statements, publishing its outcome), named, kinded and described as the
OpenTelemetry messaging conventions say for RabbitMQ, and its event carries the trace on. The
worker runs in this process (`serve`), its tracer provider swapped for one with an in-memory
exporter."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon
from contracts.amqp import to_amqp
from contracts.messages import command_message
from tests.support.broker import Broker
from worker.entrypoints.run import serve
from worker.observability import tracing
from worker.settings import Settings

POISON = "fault-poison-traced"  # its handler always raises: tried twice, then dead-lettered
MESSAGING = {"messaging.system": "rabbitmq"}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"fault_plan": f"handle:raise:{POISON}", "max_attempts": 2}


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "configure", lambda: provider)
    yield exporter
    AioPikaInstrumentor().uninstrument()


@pytest.fixture
async def worker_in_process(
    exporter: InMemorySpanExporter, broker: Broker, settings: Settings, db: AsyncEngine
) -> AsyncIterator[asyncio.Task[int]]:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(serve(settings, lambda text: text))
    try:
        deadline = loop.time() + 30
        while await broker.consumers(broker.topology.worker_queue) == 0:
            assert not task.done(), task.exception()
            assert loop.time() < deadline, "the worker never consumed"
            await asyncio.sleep(0.1)
        yield task
    finally:
        if not task.done():
            os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler: a clean stop
        assert await asyncio.wait_for(task, 60) == 0
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _of_trace(spans: tuple[ReadableSpan, ...], trace_id: int) -> list[ReadableSpan]:
    return [s for s in spans if s.context is not None and s.context.trace_id == trace_id]


@pytest.mark.timeout(120)
async def test_a_traced_command_yields_spans_of_its_trace_and_an_event_carrying_it(
    broker: Broker, exporter: InMemorySpanExporter, worker_in_process: asyncio.Task[int]
) -> None:
    events = await broker.collect_events()
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    message = command_message(CreateCoupon(code="traced", init_count=1))
    commands = await broker.ch.get_exchange(broker.topology.commands_exchange, ensure=False)
    caller = SpanContext(int(trace_id, 16), int(parent_id, 16), True, TraceFlags(1))
    with trace.use_span(NonRecordingSpan(caller)):  # a client service, within its own trace
        amqp = to_amqp(message)
        # The contracts client injects the caller's trace ...
        assert amqp.headers["traceparent"] == f"00-{trace_id}-{parent_id}-01"
        # ... and so does the aio-pika instrumentation (in this process, instrumented for the
        # worker), from the publish span it makes under it.
        await commands.publish(amqp, message.routing_key)
    await events.wait_for(1)  # alone in its batch: a batch of several links to their traces
    untraced = await broker.send(CreateCoupon(code="untraced", init_count=1))

    received = await events.wait_for(2)
    event = next(m for m in received if m.headers.get("causation_id") == message.message_id)
    carried = str(event.headers.get("traceparent"))
    assert carried.startswith(f"00-{trace_id}-"), event.headers
    assert parent_id not in carried, "the event carries the worker's own span"
    other = next(m for m in received if m.headers.get("causation_id") == untraced)
    assert trace_id not in str(other.headers.get("traceparent"))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    queue, exchange = broker.topology.worker_queue, broker.topology.events_exchange
    wanted = {f"process {queue}", f"send {exchange}"}
    while not wanted <= {
        s.name for s in _of_trace(exporter.get_finished_spans(), int(trace_id, 16))
    }:
        assert loop.time() < deadline, [s.name for s in exporter.get_finished_spans()]
        await asyncio.sleep(0.1)
    spans = _of_trace(exporter.get_finished_spans(), int(trace_id, 16))
    kinds = {(s.name, s.kind) for s in spans}
    assert any(kind is SpanKind.CONSUMER for _, kind in kinds), kinds  # receive
    assert any(kind is SpanKind.PRODUCER for _, kind in kinds), kinds  # the event's publish
    [sent] = [s for s in spans if s.parent is not None and s.parent.span_id == int(parent_id, 16)]
    assert sent.kind is SpanKind.PRODUCER  # the client's publish of the command
    assert sent.context is not None
    by_name = {s.name: s for s in spans}
    process = by_name[f"process {queue}"]
    assert process.parent is not None and process.parent.span_id == sent.context.span_id
    assert process.kind is SpanKind.CONSUMER
    assert dict(process.attributes or {}) == {
        **MESSAGING,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue,
        "messaging.rabbitmq.destination.routing_key": "coupon.create",
        "messaging.message.id": message.message_id,
    }
    assert process.status.status_code is not StatusCode.ERROR
    publish = by_name[f"send {exchange}"]
    assert publish.parent is not None and publish.parent.span_id == sent.context.span_id
    assert publish.kind is SpanKind.PRODUCER
    assert dict(publish.attributes or {}) == {
        **MESSAGING,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": exchange,
        "messaging.rabbitmq.destination.routing_key": "coupon.created",
        "messaging.message.id": str(event.message_id),
        "messaging.message.conversation_id": message.message_id,
    }
    assert publish.context is not None and process.context is not None
    # The statements of the batch's unit of work, from the SQLAlchemy instrumentation.
    statements = [s for s in spans if s.parent and s.parent.span_id == process.context.span_id]
    assert statements and all(s.kind is SpanKind.CLIENT for s in statements), statements
    assert all((s.attributes or {}).get("db.system") == "postgresql" for s in statements)
    written = [str((s.attributes or {}).get("db.statement", "")) for s in statements]
    assert any(text.startswith("INSERT INTO coupon") for text in written), written
    producer = [s for s in spans if s.parent and s.parent.span_id == publish.context.span_id]
    assert producer and all(s.kind is SpanKind.PRODUCER for s in producer)
    # The event's traceparent is the worker's publish span: consumers continue from there.
    assert carried.split("-")[2] in {
        format(s.context.span_id, "016x") for s in producer if s.context
    }


async def _spans_of(
    exporter: InMemorySpanExporter, trace_id: int, name: str, count: int
) -> list[ReadableSpan]:
    """The trace's spans, once `count` of them are called `name` (within 10 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        spans = _of_trace(exporter.get_finished_spans(), trace_id)
        if len([s for s in spans if s.name == name]) >= count:
            return spans
        assert loop.time() < deadline, [s.name for s in exporter.get_finished_spans()]
        await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_failed_attempts_and_dead_letters_say_their_error_type(
    broker: Broker, exporter: InMemorySpanExporter, worker_in_process: asyncio.Task[int]
) -> None:
    """A command whose handler always fails: each attempt's process span says why in
    `error.type`, and its dead letter is a send to the dead-letter exchange, failed with the
    `x-error`; so is an invalid command's. No span carries the old `coupon.error`."""
    trace_id = secrets.randbits(128) or 1
    caller = SpanContext(trace_id, secrets.randbits(64) or 1, True, TraceFlags(1))
    with trace.use_span(NonRecordingSpan(caller)):
        poison = await broker.send(RedeemCoupon(code=POISON))
        invalid = await broker.send_raw("coupon.redeem", b"{not json")
    dead_exchange = broker.topology.dead_exchange
    spans = await _spans_of(exporter, trace_id, f"send {dead_exchange}", count=2)

    attempts = [s for s in spans if s.name == f"process {broker.topology.worker_queue}"]
    assert len(attempts) == 2, [s.name for s in spans]  # max_attempts
    for attempt in attempts:
        assert attempt.kind is SpanKind.CONSUMER
        assert attempt.status.status_code is StatusCode.ERROR
        assert (attempt.attributes or {})["error.type"] == "worker.testing.faults.InjectedFault"
        assert (attempt.attributes or {})["messaging.message.id"] == poison
    letters = {
        str((s.attributes or {})["messaging.message.id"]): s
        for s in spans
        if s.name == f"send {dead_exchange}"
    }
    assert set(letters) == {poison, invalid}
    for letter in letters.values():
        assert letter.kind is SpanKind.PRODUCER
        assert letter.status.status_code is StatusCode.ERROR
        attributes = dict(letter.attributes or {})
        assert attributes["messaging.destination.name"] == dead_exchange
        assert attributes["messaging.rabbitmq.destination.routing_key"] == "coupon.redeem"
        assert attributes["messaging.operation.type"] == "send"
    assert (letters[poison].attributes or {})["error.type"] == "ProcessingFailed"
    assert (letters[invalid].attributes or {})["error.type"] == "InvalidJson"
    assert not [
        s.name for s in exporter.get_finished_spans() if "coupon.error" in (s.attributes or {})
    ]
