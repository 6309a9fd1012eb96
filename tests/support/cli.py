"""`coupon-worker` run as an operator runs it: a separate process, configured only by the
environment, its output captured (JSON lines: not a terminal)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def coupon_worker() -> list[str]:
    """The console script next to this interpreter, as an operator would type it."""
    script = Path(sys.executable).with_name("coupon-worker")
    if script.is_file():
        return [str(script)]
    found = shutil.which("coupon-worker")
    return [found] if found else [sys.executable, "-m", "worker"]


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def records(self) -> list[dict[str, Any]]:
        """Standard output's JSON lines (what `publish` and `events` print when piped)."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def environment(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without the worker's settings (and pytest's), plus `env`."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("WORKER_", "PYTEST_"))
    }
    return {**inherited, "WORKER_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **env}


async def start_cli(*args: str, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *coupon_worker(),
        *args,
        env=environment(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process, within: float = 60.0) -> Finished:
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"coupon-worker still running after {within}s") from None
    assert process.returncode is not None
    return Finished(
        process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )


async def run_cli(
    *args: str, env: Mapping[str, str] | None = None, within: float = 60.0, **variables: str
) -> Finished:
    """`coupon-worker ARGS` with `env` and `variables` set; waits for it to exit."""
    return await finish(await start_cli(*args, env={**(env or {}), **variables}), within)
