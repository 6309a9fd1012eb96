"""Which dead letters an operator means: by error, routing key, message id and age."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from worker.messaging.dead_letter_queue import DeadLetter

_DURATION: Final = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_SECONDS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """`90`, `90s`, `30m`, `12h`, `7d` → seconds."""
    found = _DURATION.match(text.strip())
    if found is None:
        raise argparse.ArgumentTypeError("a duration such as 90s, 30m, 12h or 7d")
    return float(found.group(1)) * _UNIT_SECONDS[found.group(2)]


@dataclass(frozen=True)
class LetterFilter:
    errors: frozenset[str] = frozenset()
    routing_keys: frozenset[str] = frozenset()
    message_ids: frozenset[str] = frozenset()
    older_than: float | None = None
    newer_than: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LetterFilter:
        return cls(
            frozenset(getattr(args, "error", [])),
            frozenset(getattr(args, "routing_key", [])),
            frozenset(getattr(args, "message_id", [])),
            getattr(args, "older_than", None),
            getattr(args, "newer_than", None),
        )

    def matches(self, letter: DeadLetter, now: datetime) -> bool:
        if self.errors and letter.error not in self.errors:
            return False
        if self.routing_keys and letter.routing_key not in self.routing_keys:
            return False
        if self.message_ids and letter.message_id not in self.message_ids:
            return False
        if self.older_than is None and self.newer_than is None:
            return True
        age = letter.age_seconds(now)  # a letter of unknown age matches no age filter
        if age is None:
            return False
        if self.older_than is not None and age < self.older_than:
            return False
        return self.newer_than is None or age < self.newer_than
