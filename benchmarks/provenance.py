"""Where a stored figure came from, and whether it still describes the code.

A result file (the fault suite's `tests/results/reliability.json`, a benchmark's
`benchmarks/results/<stamp>.json`) records the commit it ran and keeps its raw record beside
it. `freshness` compares that commit with HEAD over the paths of the code under test (`git diff
--quiet <commit> HEAD -- <paths>`), so that a rendered table says "stale since <commit>" as soon
as that code changed; the README checks then fail until the table is rendered again (or the run
repeated). Used by `tests/support/reliability_table.py` and `benchmarks/table.py`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]

# The code the fault suite's figures describe (the renderers and this module excluded: they
# shape the page, not the figures; so are the profiling scripts, which no fault test runs).
RELIABILITY_CODE: Final = (
    "worker",
    "migrations",
    "contracts",
    "tests/faults",
    "tests/support",
    "scripts",
    ":(exclude)tests/support/reliability_table.py",
    ":(exclude)scripts/*.py",  # the profiling scripts (the suite's are shell scripts)
)
# The code the benchmark's figures describe (its table renderers excluded).
BENCHMARK_CODE: Final = (
    "worker",
    "migrations",
    "contracts",
    "benchmarks",
    "uv.lock",
    ":(exclude)benchmarks/table.py",
    ":(exclude)benchmarks/replicas_table.py",
    ":(exclude)benchmarks/growth_table.py",
    ":(exclude)benchmarks/phase_tables.py",
    ":(exclude)benchmarks/pages.py",
    ":(exclude)benchmarks/provenance.py",
    ":(exclude)benchmarks/results",
)


def git(*args: str) -> subprocess.CompletedProcess[str]:
    """`git ARGS` in the repository, never raising (a missing git reads as a failure)."""
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as error:
        return subprocess.CompletedProcess(["git", *args], 128, "", str(error))


def head(length: int = 12) -> str:
    """The commit checked out (`unknown` outside a git checkout)."""
    done = git("rev-parse", f"--short={length}", "HEAD")
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def uncommitted(paths: tuple[str, ...]) -> bool:
    """Whether the working tree differs from HEAD under `paths` (tracked files)."""
    done = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    return done.returncode != 0 or bool(done.stdout.strip())


@dataclass(frozen=True, slots=True)
class Freshness:
    """Whether the code under test is what the recorded commit ran."""

    commit: str
    fresh: bool
    changed: tuple[str, ...]  # files changed since (when stale and known)
    reason: str  # why stale, or "" when fresh (no file names: see `freshness`)

    def describe(self) -> str:
        """One phrase for a rendered table."""
        if self.fresh:
            return f"fresh: the code under test is unchanged since `{self.commit}`"
        return f"**stale since `{self.commit}`**: {self.reason}"


def freshness(commit: str, paths: tuple[str, ...], *, dirty_run: bool = False) -> Freshness:
    """`git diff --quiet <commit> HEAD -- <paths>`: fresh when nothing there changed, and the
    run itself was of committed code (`dirty_run` False)."""
    if dirty_run:
        return Freshness(commit, False, (), "the run had uncommitted changes to that code")
    done = git("diff", "--quiet", commit, "HEAD", "--", *paths)
    if done.returncode == 0:
        return Freshness(commit, True, (), "")
    if done.returncode != 1:
        return Freshness(commit, False, (), f"`git diff {commit} HEAD` failed, freshness unknown")
    names = git("diff", "--name-only", commit, "HEAD", "--", *paths).stdout.split()
    # The phrase does not list the files: a page rendered stale stays true as more changes land.
    return Freshness(commit, False, tuple(names), "the code under test changed since")


def figures_line(label: str, figures: Mapping[str, object]) -> str:
    """`FIGURES [label] k=v …`: how a run states a measurement in its raw record (the fault
    suite's tests and the benchmark's runs alike; values without spaces)."""
    return f"FIGURES [{label}] " + " ".join(f"{key}={value}" for key, value in figures.items())


def parse_figures_line(text: str) -> tuple[str, dict[str, str]]:
    """(label, {key: value as written}) of a `figures_line`."""
    if not text.startswith("FIGURES ["):
        raise ValueError(f"not a FIGURES line: {text[:80]!r}")
    label, _, pairs = text.removeprefix("FIGURES [").partition("] ")
    return label, dict(pair.partition("=")[::2] for pair in pairs.split(" ") if pair)
