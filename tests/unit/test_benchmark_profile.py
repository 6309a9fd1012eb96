"""The profile phase's reading of py-spy's collapsed stacks (benchmarks/profile.py): frames
grouped by the package their file is in, self time at the leaf, inclusive time counted once per
stack however often a function recurs in it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from benchmarks.profile import package, stacks, summarize

SITE = "/work/main/.venv/lib/python3.11/site-packages"
STDLIB = "/root/.pyenv/versions/3.11.7/lib/python3.11"
RUN = f"run ({STDLIB}/asyncio/runners.py:118)"
BATCH = "run (/work/main/worker/messaging/batches.py:80)"
PUBLISH = f"basic_publish ({SITE}/aiormq/channel.py:939)"
RECURSE = "_find_and_load (<frozen importlib._bootstrap>:1176)"


def test_frames_are_grouped_by_package() -> None:
    assert package(PUBLISH) == "aiormq"
    assert package(f"x ({SITE}/six.py:3)") == "six"
    assert package(RUN) == "stdlib:asyncio"
    assert package(f"x ({STDLIB}/contextlib.py:205)") == "stdlib:contextlib"
    assert package(BATCH) == "worker/"
    assert package(RECURSE) == "stdlib:importlib"
    assert package("x (/elsewhere/thing.py:1)") == "other"


def test_collapsed_stacks_are_read_and_summed(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_text(f"{RUN};{BATCH};{PUBLISH} 30\n{RUN};{BATCH} 10\n{RUN};{BATCH};{PUBLISH} 5\n")
    counted = stacks(raw)
    assert counted[(RUN, BATCH, PUBLISH)] == 35 and counted[(RUN, BATCH)] == 10
    lines = summarize(counted)
    assert " 77.8%  aiormq" in lines and " 22.2%  worker/" in lines
    assert "100.0%  run (messaging/batches.py)" in lines


def test_a_recursive_function_counts_once_per_stack() -> None:
    lines = summarize(Counter({(RECURSE, RECURSE, RECURSE): 4, (RUN,): 4}))
    assert " 50.0%  _find_and_load (<frozen importlib._bootstrap>)" in lines
