"""The process under test, started as a user starts it: `coupon-worker run`, or the ceiling
(`python -m benchmarks.ceiling`). Its output goes to a log file; it is ready when it logs its
ready line; it is stopped with SIGTERM and must exit 0. Its resident memory and CPU time are
sampled. `running` starts one or several (replicas on one queue) together and stops them, and
its `Window` says when every one was consuming, and how long each spent on a CPU and waiting for
one (runnable, on a run queue: /proc/<pid>/task/*/schedstat) in the meantime."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.database import BenchmarkFailed, coupon_worker_command
from benchmarks.stage import Stage

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
        self.cpu_seconds = 0.0  # user + system, as last sampled (at most RSS_INTERVAL old)
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

    def run_queue_seconds(self) -> float:
        """Time its threads spent runnable but waiting for a CPU, so far (0 if unknown)."""
        if self.process is None:
            return 0.0
        waited = 0
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.process.pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    waited += int((task / "schedstat").read_text().split()[1])
        return waited / 1e9

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
                times = watched.cpu_times()
                self.cpu_seconds = times.user + times.system
                await asyncio.sleep(RSS_INTERVAL)


@dataclass
class Window:
    """When every process was consuming and when the measurement ended (time.perf_counter, 0
    until then), and each process's CPU time and run-queue wait by those times."""

    ready_at: float = 0.0
    done_at: float = 0.0
    at_ready: list[tuple[float, float]] = field(default_factory=list)  # (CPU, run queue) s
    at_end: list[tuple[float, float]] = field(default_factory=list)

    def describe(self, processes: list[TargetProcess]) -> list[dict[str, Any]]:
        """Per process, in between (its start-up and stop left out)."""
        return [
            {
                "peak_rss_bytes": process.peak_rss,
                "cpu_seconds": round(end[0] - start[0], 2),
                "run_queue_seconds": round(end[1] - start[1], 3),
            }
            for process, start, end in zip(processes, self.at_ready, self.at_end, strict=True)
        ]


def _times(processes: list[TargetProcess]) -> list[tuple[float, float]]:
    return [(process.cpu_seconds, process.run_queue_seconds()) for process in processes]


@contextlib.asynccontextmanager
async def running(
    stage: Stage, processes: list[TargetProcess], window: Window
) -> AsyncIterator[None]:
    """The targets alone on the queue while they are measured (started together, so that
    their start-ups overlap), stopped (exit 0) afterwards."""
    await stage.expect_consumers(0, "before the start")
    try:
        for process in processes:
            process.start()
        for process in processes:
            await process.wait_ready()
        window.ready_at = time.perf_counter()
        window.at_ready = _times(processes)
        kind = processes[0].kind
        await stage.expect_consumers(len(processes), f"{kind} ready")
        yield
        window.done_at = time.perf_counter()
        window.at_end = _times(processes)
        for process in processes:
            if not process.running():
                raise BenchmarkFailed(
                    f"the {kind} exited ({process.returncode}) during the measurement "
                    f"(signalled by another process, or it crashed):\n{process.tail()}"
                )
        await stage.expect_consumers(len(processes), "measurement done")
    finally:
        problems = await asyncio.gather(
            *(process.stop() for process in processes), return_exceptions=True
        )
        failed = next((p for p in problems if isinstance(p, BaseException)), None)
        if failed is not None:
            raise failed
