"""`coupon-worker healthcheck`: the exec probe (the image's HEALTHCHECK, an orchestrator's
exec liveness probe) — the health file's age, or the worker's own `/healthz` or `/readyz`."""

from __future__ import annotations

import time

from worker.app.failures import OperatorError
from worker.settings import Settings


class Unhealthy(OperatorError):
    """The probe failed: the message says why (exit status 2, as every operator error)."""


def healthcheck(settings: Settings, max_age: float, http_path: str | None) -> int:
    if http_path is not None:
        if settings.http_port is None:
            raise Unhealthy("WORKER_HTTP_PORT is not set, so there is no HTTP endpoint to probe")
        failure = probe(settings.http_host, settings.http_port, http_path)
        if failure:
            raise Unhealthy(failure)
        return 0
    path = settings.health_file
    if path is None:
        raise Unhealthy("WORKER_HEALTH_FILE is not set, so there is nothing to check")
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        raise Unhealthy(f"{path} does not exist: the worker is not consuming") from None
    if age > max_age:
        raise Unhealthy(f"{path} is {age:.0f}s old: the worker stopped consuming")
    return 0


def probe(host: str, port: int, path: str, timeout: float = 5.0) -> str | None:
    """For `coupon-worker healthcheck --http PATH` (exec probes, the image's HEALTHCHECK):
    None when the worker answers 200, else why not."""
    import urllib.error
    import urllib.request

    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    url = f"http://{target}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return None if response.status == 200 else f"{url} answered {response.status}"
    except urllib.error.HTTPError as error:
        return f"{url} answered {error.code}: {error.read().decode(errors='replace').strip()}"
    except OSError as error:
        return f"{url} does not answer ({error}): is the worker running with WORKER_HTTP_PORT?"
