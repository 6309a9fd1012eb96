"""Tracing is on only when the standard OTEL_* variables ask for it."""

from __future__ import annotations

import pytest

from worker.observability.tracing import configure, requested


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_requested_by_the_standard_variables(environ: dict[str, str], on: bool) -> None:
    assert requested(environ) is on


def test_off_means_no_provider() -> None:
    assert configure({}) is None
