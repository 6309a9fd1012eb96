"""The HTTP server answers from its own thread: a blocked event loop is reported by /healthz as
503 (not a probe timeout) while /metrics still answers; readiness reflects its checks."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request

from worker.observability.health import LOOP_DEADLINE, HealthServer, ReadinessMonitor
from worker.observability.metrics import Metrics


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


async def _answers() -> None:
    return None


async def _depth() -> int:
    return 3


async def test_a_blocked_loop_is_unhealthy_and_metrics_still_answer() -> None:
    metrics = Metrics()
    database_up = True

    async def database() -> None:
        if not database_up:
            raise ConnectionRefusedError("stopped")

    monitor = ReadinessMonitor(
        metrics, broker=lambda: True, database=database, consuming=lambda: True, dead_letters=_depth
    )
    server = HealthServer(asyncio.get_running_loop(), monitor, metrics)
    port = await asyncio.to_thread(server.start, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        assert await asyncio.to_thread(_status, f"{base}/readyz") == 503  # never checked yet
        assert (await monitor.check()).ready
        assert await asyncio.to_thread(_status, f"{base}/readyz") == 200
        assert await asyncio.to_thread(_status, f"{base}/healthz") == 200
        database_up = False
        assert not (await monitor.check()).ready
        assert await asyncio.to_thread(_status, f"{base}/readyz") == 503
        assert await asyncio.to_thread(_status, f"{base}/healthz") == 200  # an outage is not death

        seen: dict[str, int] = {}

        def probe() -> None:
            seen["healthz"] = _status(f"{base}/healthz")
            seen["metrics"] = _status(f"{base}/metrics")

        prober = threading.Thread(target=probe)
        prober.start()
        time.sleep(LOOP_DEADLINE + 3)  # noqa: ASYNC251 - blocking the loop is the point
        await asyncio.to_thread(prober.join, 30)
        assert seen == {"healthz": 503, "metrics": 200}
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_worker_unable_to_consume_past_its_limit_is_not_alive() -> None:
    metrics = Metrics()
    stuck: list[str] = []
    monitor = ReadinessMonitor(
        metrics,
        broker=lambda: True,
        database=_answers,
        consuming=lambda: False,
        dead_letters=_depth,
    )
    server = HealthServer(
        asyncio.get_running_loop(), monitor, metrics, liveness=lambda: stuck[0] if stuck else None
    )
    port = await asyncio.to_thread(server.start, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        assert await asyncio.to_thread(_status, url) == 200  # not consuming, within the limit
        stuck.append("unable to consume for 31s (no consumer registered)")

        def body() -> tuple[int, str]:
            try:
                urllib.request.urlopen(url, timeout=10)
            except urllib.error.HTTPError as error:
                return int(error.code), error.read().decode()
            return 200, ""

        status, text = await asyncio.to_thread(body)
        assert status == 503
        assert '"status": "not_consuming"' in text and "no consumer registered" in text
    finally:
        await asyncio.to_thread(server.stop)
