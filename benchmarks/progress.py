"""Progress for a person: a tqdm bar per phase on a terminal, plain lines when piped (a log
file or CI gets a line at the start, about every tenth or every 15 s, and at the end)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Never, TextIO

from tqdm import tqdm

PLAIN_EVERY_SECONDS = 15.0


class Phase:
    def __init__(self, label: str, total: int, stream: TextIO, tty: bool) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.done = 0
        self.started = time.monotonic()
        self._bar: tqdm[Never] | None = None
        self._last_line = (0, self.started)
        if tty:
            self._bar = tqdm(total=total, desc=label, unit="cmd", file=stream, leave=True)
        else:
            self._line(f"{label}: 0/{total}")

    def advance(self, count: int) -> None:
        self.update_to(self.done + count)

    def update_to(self, done: int) -> None:
        done = min(done, self.total)
        if self._bar is not None:
            self._bar.update(done - self.done)
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
            self._bar.close()
        elif exc is None:
            self._line(f"{self.label}: {self.done}/{self.total} in {seconds:.1f}s")


class Progress:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def phase(self, label: str, total: int) -> Phase:
        return Phase(label, total, self.stream, self.tty)

    def say(self, text: str) -> None:
        if self.tty:
            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
