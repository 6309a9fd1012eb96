"""Read a worker's HTTP endpoints as Prometheus and a Kubernetes probe do."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.worker_process import WorkerProcess


async def http_port(worker: WorkerProcess, within: float = 30.0) -> int:
    await worker.wait_for_log("http_listening", within)
    return int(worker.events("http_listening")[0]["port"])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


async def get(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}")


async def get_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    status, body = await get(port, path)
    return status, json.loads(body)


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value."""
    status, body = await get(port, "/metrics")
    assert status == 200, body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


async def wait_status(port: int, path: str, status: int, within: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        got, body = await get_json(port, path)
        if got == status:
            return body
        assert loop.time() < deadline, f"{path} still {got} after {within}s: {body}"
        await asyncio.sleep(0.25)
