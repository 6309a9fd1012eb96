"""The log scrubber: a known password never reaches a rendered line, whoever logged it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from worker.logs import SecretScrubber, configure_logging, message_context
from worker.settings import LogFormat, Settings, secrets_of

PASSWORD = "rabbit-s3cret-pw"
PG_PASSWORD = "p@ss:w/rd"
PG_ENCODED = "p%40ss%3Aw%2Frd"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {
        name: logging.getLogger(name).level
        for name in ("aiormq", "aio_pika", "sqlalchemy", "asyncio")
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, previous in noisy.items():
        logging.getLogger(name).setLevel(previous)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def secrets() -> list[str]:
    settings = Settings.model_validate(
        {
            "AMQP_URL": f"amqp://app:{PASSWORD}@mq:5672/",
            "DATABASE_URL": f"postgresql+asyncpg://app:{PG_ENCODED}@db:5432/coupons",
        }
    )
    return secrets_of(settings)


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_never_contain_a_password() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, "INFO", secrets(), stream=stream)
    log = structlog.stdlib.get_logger("test.scrubber")
    with message_context({"message_id": "m-1", "correlation_id": "c-1"}):
        log.info("connected", url=f"amqp://app:{PASSWORD}@mq:5672/", note=f"pw={PG_PASSWORD}")
    log.warning("retrying", dsn=f"postgresql+asyncpg://app:{PG_ENCODED}@db:5432/coupons")
    try:
        raise ConnectionError(f"cannot log in with {PASSWORD}")
    except ConnectionError:
        log.exception("broker_connection_lost")
    logging.getLogger("aiormq.connection").warning("library says %s", PASSWORD)
    logging.getLogger("sqlalchemy.pool").error("pool says %s", PG_ENCODED)

    output = lines(stream)
    assert len(output) == 5
    records = [json.loads(line) for line in output]  # still valid JSON after scrubbing
    assert [r["event"] for r in records][:3] == ["connected", "retrying", "broker_connection_lost"]
    assert records[0]["message_id"] == "m-1" and records[0]["correlation_id"] == "c-1"
    assert "message_id" not in records[1], "the binding ends with the block"
    assert records[0]["url"] == "amqp://app:***@mq:5672/"
    assert "***" in records[2]["exception"][0]["exc_value"]
    text = stream.getvalue()
    for secret in (PASSWORD, PG_PASSWORD, PG_ENCODED):
        assert secret not in text


@pytest.mark.usefixtures("restore_logging")
def test_console_lines_never_contain_a_password() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.CONSOLE, "INFO", secrets(), stream=stream)
    log = structlog.stdlib.get_logger("test.scrubber.console")
    try:
        raise RuntimeError(f"dsn app:{PG_PASSWORD}@db")
    except RuntimeError:
        log.exception("unexpected", url=f"amqp://app:{PASSWORD}@mq/")
    text = stream.getvalue()
    assert "unexpected" in text and "RuntimeError" in text
    assert PASSWORD not in text and PG_PASSWORD not in text
    assert "***" in text


@pytest.mark.usefixtures("restore_logging")
def test_the_level_filters() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, "WARNING", [], stream=stream)
    log = structlog.stdlib.get_logger("test.level")
    log.info("hidden")
    log.warning("shown")
    assert [json.loads(line)["event"] for line in lines(stream)] == ["shown"]


def test_scrub_replaces_longer_secrets_first() -> None:
    scrubber = SecretScrubber(["abc", "abcdef", ""], structlog.processors.JSONRenderer())
    assert scrubber.scrub("x abcdef y abc z") == "x *** y *** z"
    assert scrubber.scrub("nothing here") == "nothing here"


@pytest.mark.usefixtures("restore_logging")
def test_lines_written_inside_a_span_carry_its_trace_and_span_ids() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    stream = io.StringIO()
    configure_logging(LogFormat.JSON, "INFO", stream=stream)
    log = structlog.stdlib.get_logger("test.correlation")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("outer") as outer:
        log.info("inside_outer")
        with tracer.start_as_current_span("inner") as inner:
            logging.getLogger("aiormq.test").warning("a library's line")
    log.info("outside")

    inside, library, outside = (json.loads(line) for line in lines(stream))
    for line, span in ((inside, outer), (library, inner)):
        context = span.get_span_context()
        assert line["trace_id"] == format(context.trace_id, "032x"), line
        assert line["span_id"] == format(context.span_id, "016x"), line
        assert len(line["trace_id"]) == 32 and len(line["span_id"]) == 16
    assert library["trace_id"] == inside["trace_id"] and library["span_id"] != inside["span_id"]
    assert "trace_id" not in outside and "span_id" not in outside
