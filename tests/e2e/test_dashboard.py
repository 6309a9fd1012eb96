"""The Grafana dashboard in docs/dashboards reads only what a worker really exports: every metric
name of every query (panels and template variables) is checked against a live `/metrics` scrape
of a worker process. And the command latency it shows moves: from a command's AMQP timestamp to
its outcome confirmed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contracts import CreateCoupon
from tests.conftest import StartWorker
from tests.support.broker import Broker
from tests.support.http_probe import get, http_port, scrape
from tests.support.promql import dashboard_queries, exported_series, metric_names

DASHBOARDS = Path(__file__).resolve().parents[2] / "docs" / "dashboards"
LATENCY = "coupon_worker_command_latency_seconds"


def test_there_is_a_dashboard_with_queries() -> None:
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    assert dashboards, DASHBOARDS
    for path in dashboards:
        queries = list(dashboard_queries(json.loads(path.read_text())))
        assert len(queries) >= 10, path
        assert all(metric_names(query) for _, query in queries), path


@pytest.mark.timeout(120)
async def test_every_dashboard_query_names_an_exported_metric(
    broker: Broker, start_worker: StartWorker
) -> None:
    events = await broker.collect_events()
    worker = start_worker(worker_http_port="0")
    port = await http_port(worker)
    await worker.wait_ready()

    # One command stamped now by the contracts client, one stamped 45 s ago by its sender.
    await broker.send(CreateCoupon(code="dash-now", init_count=1))
    late = datetime.now(UTC) - timedelta(seconds=45)
    body = CreateCoupon(code="dash-late", init_count=1).model_dump_json().encode()
    await broker.send_raw("coupon.create", body, timestamp=late)
    await events.wait_for(2)

    status, exposition = await get(port, "/metrics")
    assert status == 200
    exported = exported_series(exposition)
    missing = {
        f"{where}: {name}"
        for path in sorted(DASHBOARDS.glob("*.json"))
        for where, query in dashboard_queries(json.loads(path.read_text()))
        for name in metric_names(query)
        if name not in exported
    }
    assert not missing, sorted(missing)

    samples = await scrape(port)
    assert samples[(f"{LATENCY}_count", ())] == 2
    assert samples[(f"{LATENCY}_bucket", (("le", "10.0"),))] == 1  # the fresh one
    assert samples[(f"{LATENCY}_bucket", (("le", "30.0"),))] == 1  # 45 s ago: not within 30
    assert samples[(f"{LATENCY}_bucket", (("le", "60.0"),))] == 2
    for reason in ("transaction_conflict", "dependency_unavailable", "batch_split"):
        # Exported from the start (a rate needs the series), and nothing went wrong here.
        assert samples[("coupon_worker_retries_total", (("reason", reason),))] == 0
