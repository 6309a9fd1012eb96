"""Tracing is on only when the standard OTEL_* variables ask for it."""

from __future__ import annotations

import pytest

from worker.observability.tracing import (
    _exporters,
    configure,
    exporter_names,
    requested,
    service_resource,
)


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


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        # The specification's default protocol, and the exporter the extra installs.
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp_proto_http"]),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ["otlp_proto_grpc"]),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            ["otlp_proto_http"],
        ),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": "zipkin_json"}, ["zipkin_json"]),
    ],
)
def test_exporters_by_the_standard_variables(environ: dict[str, str], names: list[str]) -> None:
    assert exporter_names(environ) == names


def test_an_unknown_protocol_is_named() -> None:
    with pytest.raises(ValueError, match="'http/json'"):
        exporter_names({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_the_exporters_are_the_sdks_entry_points() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    exporters = _exporters(["console", "otlp_proto_http"])
    assert [type(e) for e in exporters] == [ConsoleSpanExporter, OTLPSpanExporter]
    for exporter in exporters:
        exporter.shutdown()
    # grpc asked for, without its exporter installed: said, with what to install.
    with pytest.raises(LookupError, match="opentelemetry-exporter-otlp-proto-grpc"):
        _exporters(["otlp_proto_grpc"])


@pytest.mark.parametrize(
    ("environ", "service"),
    [
        ({}, "coupon-worker"),
        (
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=billing,deployment.environment=prod"},
            "billing",
        ),
        (
            {"OTEL_SERVICE_NAME": "coupons-eu", "OTEL_RESOURCE_ATTRIBUTES": "service.name=x"},
            "coupons-eu",
        ),
    ],
)
def test_the_resource_is_the_environments(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], service: str
) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    attributes = service_resource().attributes
    assert attributes["service.name"] == service
    if "deployment.environment" in environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        assert attributes["deployment.environment"] == "prod"  # kept, not overridden
