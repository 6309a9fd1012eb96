"""OpenTelemetry traces (the optional `tracing` extra), configured by the standard `OTEL_*`
variables, with spans named and described by the OpenTelemetry messaging conventions for RabbitMQ.

On when `OTEL_TRACES_EXPORTER` (`otlp`, `console`, or any exporter registered under the SDK's
`opentelemetry_traces_exporter` entry points) or an `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` is set,
and `OTEL_SDK_DISABLED` is not `true`. The SDK reads the rest itself: `OTEL_SERVICE_NAME` and
`OTEL_RESOURCE_ATTRIBUTES` (the service is named `coupon-worker` only when neither names it),
`OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, `OTEL_SPAN_*_LIMIT`, and the exporter's
`OTEL_EXPORTER_OTLP_*`; `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` picks the OTLP exporter
(`http/protobuf`, the default and the one the extra installs, or `grpc`). A process started
under `opentelemetry-instrument` keeps the provider that the SDK's auto-configuration made.
Off, nothing of this is imported or wired, and the hot path runs exactly as without it.

What a traced command yields, all in the trace of the `traceparent` it carried (W3C trace
context, the default propagator):
- `<queue> receive`: the maintained aio-pika instrumentation, around the delivery;
- `process <queue>` (CONSUMER): one attempt at the batch's unit of work (the child of the
  command's context for a batch of one, else a span of its own linked to every traced command in
  it); a failed attempt says why in `error.type`; under it, the SQLAlchemy instrumentation's span
  of each statement (`connect`, `SELECT …`, `INSERT …`);
- `send <exchange>` (PRODUCER) per outcome, and under it the instrumentation's publish spans,
  which inject their context into the event's and the reply's headers, so consumers continue the
  trace; a dead letter is a `send <dead-letter exchange>` with `error.type` = its `x-error`.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final, TypeVar

import structlog
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.names import Topology

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

log = structlog.stdlib.get_logger(__name__)

TRACER_NAME: Final = "coupon-worker"
REMEMBERED: Final = 10_000  # trace contexts of delivered commands kept for their batch
# The OTLP exporter by `OTEL_EXPORTER_OTLP_PROTOCOL`, as the SDK's entry points name them. The
# specification's default is http/protobuf (the Python SDK's own is grpc, which the extra does
# not install): an endpoint alone, `http://collector:4318`, works as the README says.
OTLP_EXPORTERS: Final = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
DEFAULT_OTLP_PROTOCOL: Final = "http/protobuf"

# Attribute names and values of the messaging conventions (semantic conventions 1.3x: the
# operation type of a publication is `send`, `publish` being its deprecated name).
SYSTEM: Final = {"messaging.system": "rabbitmq"}
DESTINATION: Final = "messaging.destination.name"
ROUTING_KEY: Final = "messaging.rabbitmq.destination.routing_key"
OPERATION_TYPE: Final = "messaging.operation.type"
OPERATION_NAME: Final = "messaging.operation.name"
MESSAGE_ID: Final = "messaging.message.id"
CONVERSATION_ID: Final = "messaging.message.conversation_id"
BATCH_COUNT: Final = "messaging.batch.message_count"
ERROR_TYPE: Final = "error.type"

T = TypeVar("T")


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def exporter_names(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The `opentelemetry_traces_exporter` entry points `OTEL_TRACES_EXPORTER` asks for, `otlp`
    resolved by the traces' (else the general) OTLP protocol, as the SDK resolves it."""
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or DEFAULT_OTLP_PROTOCOL
    ).strip()
    resolved = []
    for name in (n.strip() for n in names.split(",")):
        if name == "otlp":
            if protocol not in OTLP_EXPORTERS:
                raise ValueError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not one of "
                    f"{', '.join(OTLP_EXPORTERS)}"
                )
            name = OTLP_EXPORTERS[protocol]
        if name and name != "none":
            resolved.append(name)
    return resolved


def _exporters(names: Sequence[str]) -> list[SpanExporter]:
    available = {e.name: e for e in entry_points(group="opentelemetry_traces_exporter")}
    missing = [name for name in names if name not in available]
    if missing:
        grpc = "otlp_proto_grpc" in missing
        hint = " (install opentelemetry-exporter-otlp-proto-grpc)" if grpc else ""
        raise LookupError(f"no trace exporter named {', '.join(missing)} is installed{hint}")
    return [available[name].load()() for name in names]


def service_resource() -> Resource:
    """The SDK's resource from `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (which it
    reads from the process's environment itself), named `coupon-worker` when neither names the
    service: the SDK's `unknown_service:python` would say nothing."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: TRACER_NAME}))
    return resource


def configure(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """The process's tracer provider, exporting as the environment says; None when tracing is
    off, the extra is missing or the exporter asked for is not installed (said once in the log).
    """
    if not requested(environ):
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("tracing_unavailable", reason="the 'tracing' extra is not installed")
        return None
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # `opentelemetry-instrument` configured the SDK
        return current
    try:
        exporters = _exporters(exporter_names(environ))
    except (ValueError, LookupError) as error:
        log.warning("tracing_unavailable", reason=str(error))
        return None
    provider = TracerProvider(resource=service_resource())  # sampler: OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


class Tracing:
    """The decorators, the delivery hook and the database's instrumentation, for one tracer
    provider and one worker's topology (the queue it processes, the exchanges it sends to)."""

    def __init__(self, provider: TracerProvider, topology: Topology) -> None:
        from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor

        instrumentor = AioPikaInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
        self.provider = provider
        self.topology = topology
        self.tracer: Tracer = provider.get_tracer(TRACER_NAME)
        self._contexts: OrderedDict[str, Context] = OrderedDict()
        self._instrumented_database = False

    def delivered(self, message: AbstractIncomingMessage) -> None:
        """Remember the trace context of a traced command until its batch runs."""
        headers = message.headers or {}
        if "traceparent" not in headers or message.message_id is None:
            return
        from opentelemetry import propagate

        self._contexts[message.message_id] = propagate.extract(text_headers(headers))
        while len(self._contexts) > REMEMBERED:
            self._contexts.popitem(last=False)

    def context_of(self, message_id: str) -> Context | None:
        return self._contexts.get(message_id)

    def database(self, engine: AsyncEngine) -> None:
        """A span per statement (and per connection checkout) of `engine`, from the maintained
        SQLAlchemy instrumentation: it sees every statement at SQLAlchemy's cursor events,
        where asyncpg's instrumentation would miss the prepared statements SQLAlchemy's asyncpg
        dialect runs. Its declared range stops short of SQLAlchemy 2.1 (`< 2.1.0`) while the
        events it listens to are unchanged there, hence `skip_dep_check`. Under
        `opentelemetry-instrument` the engine is already instrumented and left as it is."""
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        instrumentor = SQLAlchemyInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            return
        instrumentor.instrument(
            engine=engine.sync_engine, tracer_provider=self.provider, skip_dep_check=True
        )
        self._instrumented_database = True

    @contextlib.asynccontextmanager
    async def untraced(self) -> AsyncIterator[None]:
        """No instrumentation's spans inside (the readiness probe's `SELECT 1` every 2 s would
        otherwise start a trace of its own each time)."""
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        with suppress_instrumentation():
            yield

    def close(self) -> None:
        """Flush the spans still buffered and let go of the database's events (blocks: the
        exporter may wait on the network)."""
        if self._instrumented_database:
            from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

            SQLAlchemyInstrumentor().uninstrument()
            self._instrumented_database = False
        self.provider.shutdown()


def text_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in headers.items()}


def error_type(error: BaseException) -> str:
    """`error.type` of an exception: its fully qualified class name, as the conventions advise
    (`worker.app.failures.DependencyUnavailable`, `asyncpg.exceptions.…`)."""
    kind = type(error)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


async def untraced(tracing: Tracing | None, work: Callable[[], Awaitable[T]]) -> T:
    """`work()` without instrumentation spans when tracing is on; as it is when off."""
    if tracing is None:
        return await work()
    async with tracing.untraced():
        return await work()
