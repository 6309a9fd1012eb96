"""Durations as operators type them for `dead-letters --older-than/--newer-than`."""

from __future__ import annotations

import argparse

import pytest

from worker.entrypoints.dead_letter_filters import duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5m", "5w", "5 m m", "1e3"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="30m"):
        duration(text)
