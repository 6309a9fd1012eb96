"""The process under test, started as a user starts it: `coupon-worker run`, or the ceiling
(`python -m benchmarks.ceiling`). Its output goes to a log file; it is ready when it logs its
ready line; it is stopped with SIGTERM and must exit 0. Its resident memory is sampled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil

from benchmarks.database import BenchmarkFailed, coupon_worker_command

# Set by the benchmark for every run; a user's own values of these would break the isolation.
CONTROLLED = ("WORKER_NAME_PREFIX", "WORKER_HEALTH_FILE", "WORKER_FAULT_PLAN", "WORKER_LOG_FORMAT")
RSS_INTERVAL = 0.1  # seconds between samples


class TargetProcess:
    def __init__(self, kind: str, command: list[str], env: Mapping[str, str], log: Path) -> None:
        self.kind = kind
        self.command = command
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss = 0
        self._sampler: asyncio.Task[None] | None = None

    @classmethod
    def worker(cls, env: Mapping[str, str], log: Path) -> TargetProcess:
        return cls("worker", [*coupon_worker_command(), "run"], env, log)

    @classmethod
    def ceiling(cls, env: Mapping[str, str], log: Path, *args: str) -> TargetProcess:
        return cls("ceiling", [sys.executable, "-m", "benchmarks.ceiling", *args], env, log)

    @property
    def ready_marker(self) -> str:
        return "worker_ready" if self.kind == "worker" else "ceiling_ready"

    def start(self) -> None:
        environment = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
        environment.update({"WORKER_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
        environment.update(self.env)
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                self.command, env=environment, stdout=output, stderr=subprocess.STDOUT
            )
        self._sampler = asyncio.create_task(self._sample_rss())

    async def wait_ready(self, within: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.ready_marker not in self.log.read_text(errors="replace"):
            if not self.running():
                raise BenchmarkFailed(f"the {self.kind} exited before it was ready:\n{self.tail()}")
            if loop.time() > deadline:
                raise BenchmarkFailed(f"the {self.kind} not ready in {within}s:\n{self.tail()}")
            await asyncio.sleep(0.05)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def tail(self, characters: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-characters:]
        except OSError:
            return "(no output)"

    async def stop(self, within: float = 60.0) -> None:
        """SIGTERM, then an exit 0 within `within` seconds, or BenchmarkFailed (and a kill)."""
        try:
            if self.process is None:
                return
            if self.running():
                self.process.send_signal(signal.SIGTERM)
            process = self.process
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(process.wait), within)
            if self.running():
                raise BenchmarkFailed(f"the {self.kind} did not stop in {within}s:\n{self.tail()}")
            if self.process.returncode != 0:
                raise BenchmarkFailed(
                    f"the {self.kind} exited {self.process.returncode}:\n{self.tail()}"
                )
        finally:
            self.kill()

    def kill(self) -> None:
        """Never leave it running: a robust worker would re-declare its queue and consume on."""
        if self._sampler is not None:
            self._sampler.cancel()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    async def _sample_rss(self) -> None:
        assert self.process is not None
        with contextlib.suppress(psutil.Error):
            watched = psutil.Process(self.process.pid)
            while True:
                self.peak_rss = max(self.peak_rss, watched.memory_info().rss)
                await asyncio.sleep(RSS_INTERVAL)
