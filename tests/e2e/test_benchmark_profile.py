"""`python -m benchmarks.profile` (`make bench-profile`), end to end with a small count: the
worker run under py-spy, every exactly-once check passed, and a profile file that says how much
the worker's thread ran, where (by package, by frame), and what its tables did. The statement
table is there where the server preloads `pg_stat_statements`, and said to be left out where it
does not. Deselect with `-m "not bench"`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import Services

pytestmark = [pytest.mark.bench, pytest.mark.timeout(600)]
# Enough work (about a second) to outlast py-spy's attach once the worker is ready: with 400
# commands the whole run could be over before the first sample, and the profile refuses that.
COMMANDS = 3000


def test_profile_samples_the_worker_and_reads_its_tables(
    services: Services, tmp_path: Path
) -> None:
    output = tmp_path / "redeem.txt"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
        "AMQP_URL": services.amqp_url,
        "DATABASE_URL": services.database_url,
    }
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.profile",
            f"--commands={COMMANDS}",
            f"--output={output}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    profile = output.read_text()
    assert f"workload redeem: {COMMANDS:,} commands preloaded" in profile
    assert "'passed': True" in profile and "'lost': 0" in profile and "'doubled': 0" in profile
    samples = re.search(r"([\d,]+) samples of its busy thread", profile)
    assert samples is not None and int(samples.group(1).replace(",", "")) > 0, profile[:2000]
    for section in ("== self time by package", "== self time by leaf frame", "== inclusive time"):
        assert section in profile
    assert re.search(r"^\s+\d+\.\d%\s+aiormq$", profile, re.MULTILINE), "no aiormq frames"
    # Every redeem wrote one processed_command row, read from the run's own database.
    tables = re.search(r"processed_command\s+([\d,]+)", profile)
    assert tables is not None and int(tables.group(1).replace(",", "")) == COMMANDS
    assert ("== statements by total execution time" in profile) or (
        "pg_stat_statements is not preloaded" in profile
    )
