"""Progress for a person: a bar per phase on a terminal (rich, which the worker's CLI uses
too), plain lines when piped (a log file or CI gets a line at the start, about every tenth or
every 15 s, and at the end)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bar

PLAIN_EVERY_SECONDS = 15.0


class Phase:
    def __init__(self, label: str, total: int, stream: TextIO, console: Console | None) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.done = 0
        self.started = time.monotonic()
        self._bar: Bar | None = None
        self._last_line = (0, self.started)
        if console is not None:
            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()
        else:
            self._line(f"{label}: 0/{total}")

    def advance(self, count: int) -> None:
        self.update_to(self.done + count)

    def update_to(self, done: int) -> None:
        done = min(done, self.total)
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
        else:
            shown, at = self._last_line
            now = time.monotonic()
            if done - shown >= max(self.total // 10, 1) or now - at >= PLAIN_EVERY_SECONDS:
                self._line(f"{self.label}: {done}/{self.total}")
                self._last_line = (done, now)
        self.done = done

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> Phase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        seconds = time.monotonic() - self.started
        if self._bar is not None:
            self._bar.stop()
        elif exc is None:
            self._line(f"{self.label}: {self.done}/{self.total} in {seconds:.1f}s")


class Progress:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._console = Console(file=self.stream) if self.stream.isatty() else None

    def phase(self, label: str, total: int) -> Phase:
        return Phase(label, total, self.stream, self._console)

    def say(self, text: str) -> None:
        if self._console is not None:
            self._console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)
