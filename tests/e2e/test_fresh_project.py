"""coupon-contracts as a client team gets it (issue 18, "Done when"): the wheel built from
contracts/, installed alone (with its `client` and `testing` extras from the package registry)
in a fresh virtual environment, runs the README's example suite in a project with no pytest
configuration at all, without a warning; and `mypy --strict` against the installed wheel
reports a misspelt keyword of `redeem`.

Needs the package registry (or uv's cache of it) for pydantic, aio-pika, pytest and
pytest-asyncio; about 20 s with a warm cache."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
UV = str(ROOT / "scripts" / "uv")
EXAMPLE = ROOT / "tests" / "example_service"
VERSION = "1.1.0"


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COUPON_"))}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    ok(run(UV, "build", "--wheel", "--out-dir", out, ROOT / "contracts"))
    ok(run(UV, "build", "--wheel", "--out-dir", out, ROOT))
    [contracts] = out.glob(f"coupon_contracts-{VERSION}-*.whl")
    [worker] = out.glob("coupon_worker-*.whl")
    return {"contracts": contracts, "worker": worker}


@pytest.fixture(scope="module")
def python(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the contracts wheel and its extras, nothing else."""
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    ok(run(UV, "venv", "--python", sys.executable, venv))
    interpreter = venv / "bin" / "python"
    requirement = f"coupon-contracts[client,testing] @ {wheels['contracts'].as_uri()}"
    ok(run(UV, "pip", "install", "--python", interpreter, requirement))
    return interpreter


def test_each_wheel_ships_its_own_files(wheels: dict[str, Path]) -> None:
    with zipfile.ZipFile(wheels["contracts"]) as archive:
        names = archive.namelist()
        metadata = archive.read(f"coupon_contracts-{VERSION}.dist-info/METADATA").decode()
        entry_points = archive.read(f"coupon_contracts-{VERSION}.dist-info/entry_points.txt")
    assert "contracts/py.typed" in names and "contracts/testing/plugin.py" in names
    assert not [n for n in names if n.startswith("worker/")]
    assert "contracts/asyncapi.py" not in names  # the worker's now
    assert "# coupon-contracts" in metadata  # the package README is its long description
    assert b"coupon-contracts = contracts.cli:main" in entry_points
    with zipfile.ZipFile(wheels["worker"]) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert not [n for n in names if n.startswith("contracts/")]
    assert f"Requires-Dist: coupon-contracts[client]=={VERSION}" in metadata


def test_the_example_suite_passes_in_a_project_without_pytest_configuration(
    python: Path, tmp_path: Path
) -> None:
    project = tmp_path / "checkout"
    shutil.copytree(EXAMPLE / "example_checkout", project / "example_checkout")
    # test_exactly_once.py needs the outbox/inbox extras and PostgreSQL: run by
    # tests/e2e/test_example_service.py, where both are.
    ignored = shutil.ignore_patterns("__py*", "test_exactly_once.py")
    shutil.copytree(EXAMPLE / "tests", project / "tests", ignore=ignored)
    assert not [p for p in project.rglob("*") if p.name in CONFIG_FILES]
    result = run(python, "-m", "pytest", "-W", "error", "-p", "no:cacheprovider", cwd=project)
    output = ok(result)
    assert re.search(r"\b4 passed in", output), output
    assert "warning" not in output.lower(), output


CONFIG_FILES = {"pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini", "conftest.py"}

MISSPELT = """\
from contracts.client import CouponClient


async def apply(client: CouponClient) -> int:
    redeemed = await client.redeem("SPRING", messge_id="order-1")
    return redeemed.remaining_count
"""


def test_mypy_strict_reports_a_misspelt_keyword_against_the_installed_wheel(
    python: Path, tmp_path: Path
) -> None:
    source = tmp_path / "client.py"
    source.write_text(MISSPELT)
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    checked = run(*mypy, "--python-executable", python, source, cwd=tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert 'Unexpected keyword argument "messge_id"' in checked.stdout
    source.write_text(MISSPELT.replace("messge_id", "message_id"))
    ok(run(*mypy, "--python-executable", python, source, cwd=tmp_path))


def test_the_console_script_is_installed(python: Path) -> None:
    version = ok(run(python.parent / "coupon-contracts", "--version"))
    assert version.strip() == "wire contract v1.1"


def test_pytest_fixtures_documents_every_coupon_fixture(python: Path, tmp_path: Path) -> None:
    listed = ok(run(python, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", cwd=tmp_path))
    fixtures = [
        "coupon_backend",
        "coupon_backend_factory",
        "coupon_backend_name",
        "coupon_client",
        "coupon_events",
        "coupon_replay",
    ]
    for name in fixtures:
        entry = re.search(rf"^{name}\b.*\n(?P<doc>.*)$", listed, re.MULTILINE)
        assert entry, f"{name} is not listed:\n{listed}"
        assert entry["doc"].strip() and "no docstring" not in entry["doc"], entry.group(0)
    assert "A `contracts.client.CouponClient` of this test's backend" in listed
