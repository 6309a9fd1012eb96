"""structlog configuration: JSON lines off a terminal, readable on one, secrets scrubbed."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from worker.settings import LogFormat


class SecretScrubber:
    """Replaces every known secret in the rendered line, whichever field or traceback held it."""

    def __init__(self, secrets: Iterable[str], render: Processor) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._render = render

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> str:
        rendered = self._render(logger, name, event)
        text = rendered if isinstance(rendered, str) else str(rendered)
        return self.scrub(text)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def add_trace_context(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """`trace_id` and `span_id` (hex, as trace back ends show them) on a line written inside a
    span, so that a log line can be joined to its trace. OpenTelemetry is an optional extra
    that is imported only when tracing is on: until then (`opentelemetry.trace` not loaded)
    this costs one dictionary look-up a line and adds nothing."""
    if "opentelemetry.trace" not in sys.modules:
        return event
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def configure_logging(
    log_format: LogFormat,
    level: str,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> SecretScrubber:
    """Configure structlog (and route stdlib logging of aio-pika/aiormq/SQLAlchemy through it)."""
    out = stream or sys.stderr
    use_console = log_format is LogFormat.CONSOLE or (log_format is LogFormat.AUTO and out.isatty())
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    scrubber = SecretScrubber(secrets, renderer)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not use_console:
        shared.append(structlog.processors.dict_tracebacks)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, scrubber],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The libraries' own INFO chatter (every reconnect attempt, every pool event) is noise here;
    # the worker logs the facts that matter itself.
    for noisy in ("aiormq", "aio_pika", "sqlalchemy", "asyncio", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    transport = logging.getLogger("aiormq.connection")
    for old in [f for f in transport.filters if isinstance(f, RaisedErrorsAtDebug)]:
        transport.removeFilter(old)
    transport.addFilter(RaisedErrorsAtDebug(debug=logging.getLevelName(level) <= logging.DEBUG))
    return scrubber


class RaisedErrorsAtDebug(logging.Filter):
    """aiormq logs a failed connection attempt at ERROR ("error when creating transport") and
    then raises the same error to its caller, which says it once, in its own words: the CLI's
    one-line `cannot reach RabbitMQ at ...`, the worker's `broker_connection_lost`. Logged
    twice, the raw line came first and read like a second, different fault; it is kept at DEBUG,
    shown only when WORKER_LOG_LEVEL=DEBUG."""

    RAISED: Final = frozenset({"error when creating transport: %r"})

    def __init__(self, *, debug: bool) -> None:
        super().__init__()
        self._debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in self.RAISED:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self._debug


@contextmanager
def message_context(context: Mapping[str, Any]) -> Iterator[None]:
    """Every log line inside, the libraries' included, carries the message's identifiers
    (`message_id`, `correlation_id`, `routing_key`); the binding ends with the block."""
    with structlog.contextvars.bound_contextvars(**context):
        yield
