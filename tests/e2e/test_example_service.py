"""tests/example_service: a client service with its own pyproject and its own test suite, run as
its team runs it (a separate pytest process, the plugin found through its entry point), on the
in-memory backend and on a real worker that the plugin starts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import Services

EXAMPLE = Path(__file__).parents[1] / "example_service"


def run_example_suite(
    services: Services, *args: str, where: Path = EXAMPLE
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COUPON_"))}
    env.update(
        COUPON_AMQP_URL=services.amqp_url,
        COUPON_DATABASE_URL=services.database_url,
        CHECKOUT_DATABASE_URL=services.database_url,
    )
    options = ["-p", "no:cacheprovider", "--rootdir", str(where), "--confcutdir", str(where)]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *options,
            "-c",
            str(where / "pyproject.toml"),
            "-q",
            *args,
        ],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


def passed(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    found = re.search(r"(\d+) passed", result.stdout)
    assert found, result.stdout
    return int(found.group(1))


@pytest.mark.timeout(600)
def test_the_example_suite_passes_in_memory(services: Services) -> None:
    assert passed(run_example_suite(services)) == 6


@pytest.mark.timeout(600)
def test_the_example_suite_passes_against_a_real_worker(services: Services) -> None:
    assert passed(run_example_suite(services, "--coupon-backend=real", "-k", "not golden")) == 5


@pytest.mark.timeout(600)
def test_the_example_golden_replay_passes_against_a_real_worker(services: Services) -> None:
    """Needs coupon ids derived from the creating command's message_id (issue 9, item 1)."""
    assert passed(run_example_suite(services, "--coupon-backend=real", "-k", "golden")) == 1


@pytest.mark.timeout(600)
def test_a_changed_outcome_fails_with_a_readable_diff(services: Services, tmp_path: Path) -> None:
    copy = tmp_path / "example_service"
    shutil.copytree(EXAMPLE, copy)
    golden = copy / "tests" / "golden" / "black-friday.jsonl"
    golden.write_text(
        golden.read_text().replace('\\"remaining_count\\":100', '\\"remaining_count\\":99')
    )
    result = run_example_suite(services, "-k", "golden", where=copy)
    assert result.returncode == 1
    assert "1 outcome(s) differ from" in result.stdout
    assert "--coupon-update-golden" in result.stdout
    line = r'^E\s+{}\{{"command":"coupon.create","command_message_id":"bf-3"'
    assert re.search(line.format("-"), result.stdout, re.MULTILINE)
    assert re.search(line.format(r"\+"), result.stdout, re.MULTILINE)

    # --coupon-update-golden rewrites it, and the suite passes again.
    assert run_example_suite(services, "--coupon-update-golden", where=copy).returncode == 0
    assert golden.read_text() == (EXAMPLE / "tests" / "golden" / "black-friday.jsonl").read_text()
    assert passed(run_example_suite(services, where=copy)) == 6
