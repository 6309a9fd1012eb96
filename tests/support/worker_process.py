"""The worker as a separate process, exactly as an operator runs it (and, through `command`,
any other Python process a fault test starts, kills and reads the output of)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WORKER_COMMAND = ("-m", "worker", "run")


class WorkerProcess:
    def __init__(
        self,
        env: dict[str, str],
        name: str = "worker",
        *,
        command: Sequence[str] = WORKER_COMMAND,
        cwd: Path | None = None,
    ) -> None:
        self.env = env
        self.name = name
        self.command = tuple(command)
        self.cwd = cwd
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, *args: str) -> WorkerProcess:
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("WORKER_", "PYTEST_"))
        }
        environment.update({"WORKER_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
        environment.update(self.env)
        self.process = subprocess.Popen(
            [sys.executable, *self.command, *args],
            env=environment,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def records(self) -> list[dict[str, Any]]:
        parsed = []
        for line in list(self.lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                parsed.append(record)
        return parsed

    def events(self, name: str) -> list[dict[str, Any]]:
        return [record for record in self.records if record.get("event") == name]

    def processed(self) -> int:
        """How many commands it answered so far (one `batch_answered` line per batch)."""
        return sum(int(record["count"]) for record in self.events("batch_answered"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def wait_ready(self, within: float = 30.0, count: int = 1) -> None:
        await self.wait_for_log("worker_ready", within, count)

    async def wait_for_log(self, event: str, within: float = 30.0, count: int = 1) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(self.events(event)) < count:
            if not self.running():
                raise AssertionError(
                    f"{self.name} exited ({self.returncode}) before logging {event}:\n"
                    + self.output[-4000:]
                )
            if loop.time() > deadline:
                raise AssertionError(
                    f"{self.name} did not log {event} within {within}s:\n" + self.output[-4000:]
                )
            await asyncio.sleep(0.05)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        if self.running():
            self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)
            self._release()

    def _release(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    async def wait_exit(self, within: float = 60.0) -> int:
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.process.poll() is None:
            if loop.time() > deadline:
                raise AssertionError(f"{self.name} still running after {within}s")
            await asyncio.sleep(0.05)
        self._release()
        return int(self.process.returncode)

    async def stop(self, within: float = 60.0) -> int:
        if not self.running():
            return int(self.returncode or 0)
        self.signal(signal.SIGTERM)
        return await self.wait_exit(within)
