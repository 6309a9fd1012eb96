"""`contracts` stands alone: pydantic only, and it prints the contract as JSON Schema."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import contracts
from contracts import names
from contracts.commands import COMMANDS
from contracts.events import EVENTS

FORBIDDEN = (
    "aio_pika",
    "aiormq",
    "pamqp",
    "sqlalchemy",
    "asyncpg",
    "structlog",
    "alembic",
    "worker",
)

PROBE = """
import json, sys
import contracts, contracts.commands, contracts.events, contracts.validation
import contracts.messages, contracts.names, contracts.schema, contracts.protocol
import contracts.errors, contracts.received, contracts.recording, contracts.requests
import contracts.cli  # record / replay import aio-pika only when they run
print(json.dumps(sorted(sys.modules)))
"""


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_contracts_import_nothing_but_pydantic() -> None:
    result = run_python("-c", PROBE)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    offenders = sorted(module for module in loaded if module.split(".")[0] in FORBIDDEN)
    assert offenders == [], f"contracts pulled in {offenders}"
    assert "pydantic" in loaded  # the probe did import what it claims


def test_contracts_import_time_lists_no_worker_dependency() -> None:
    # -X importtime names every module imported, however it got there.
    result = run_python("-X", "importtime", "-c", "import contracts, contracts.validation")
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "contracts.validation" in imported
    assert not {m for m in imported if m.split(".")[0] in FORBIDDEN}


def test_python_m_contracts_explains_itself() -> None:
    helped = run_python("-m", "contracts", "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: coupon-contracts")
    for command in ("schema", "record", "replay"):
        assert command in helped.stdout
    assert "asyncapi" not in helped.stdout  # the worker's (coupon-worker asyncapi)
    bare = run_python("-m", "contracts")  # no command chosen: the usage, not a page of JSON
    assert (bare.returncode, bare.stdout) == (2, "")
    assert "required: COMMAND" in bare.stderr
    versioned = run_python("-m", "contracts", "--version")
    assert versioned.stdout.strip() == f"wire contract v{names.CONTRACT_VERSION}"


def test_the_package_version_is_the_contract_version() -> None:
    folder = Path(contracts.__file__).parent
    version = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["version"]
    assert version.rsplit(".", 1)[0] == names.CONTRACT_VERSION == "1.1"
    contract = (Path(__file__).parents[2] / "docs" / "contract.md").read_text()
    assert f"v{names.CONTRACT_VERSION} (additive)" in contract
    assert f"## {version}\n" in (folder / "CHANGELOG.md").read_text()


def test_python_m_contracts_prints_the_schema_of_every_command_and_event() -> None:
    result = run_python("-m", "contracts", "schema")
    assert result.returncode == 0, result.stderr
    schema: dict[str, Any] = json.loads(result.stdout)
    definitions: dict[str, Any] = schema["$defs"]
    assert set(schema["commands"]) == set(names.COMMAND_ROUTING_KEYS)
    assert set(schema["events"]) == {
        "coupon.created",
        "coupon.redeemed",
        "coupon.found",
        "coupon.error",
    }
    for table, models in ((schema["commands"], COMMANDS), (schema["events"], EVENTS)):
        for key, reference in table.items():
            name = models[key].__name__
            assert reference == {"$ref": f"#/$defs/{name}"}
            assert definitions[name]["type"] == "object"
            assert "properties" in definitions[name]
    create = definitions["CreateCoupon"]
    assert create["additionalProperties"] is False
    assert set(create["required"]) == {"code", "init_count"}
    count = create["properties"]["init_count"]
    assert (count["type"], count["minimum"], count["maximum"]) == ("integer", 1, 1_000_000_000)
    code = create["properties"]["code"]
    assert (code["minLength"], code["maxLength"]) == (1, 64)
    assert code["pattern"] == "^[A-Za-z0-9_-]+$"
    error = definitions["CouponError"]
    kinds = definitions[error["properties"]["error"]["$ref"].rsplit("/", 1)[-1]]
    assert set(kinds["enum"]) == {"DoesNotExist", "AlreadyExists", "Exhausted"}
    # Every $ref resolves inside the document.
    refs = _refs(schema)
    assert refs and all(ref.rsplit("/", 1)[-1] in definitions for ref in refs)


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_coupon_contracts_distribution_declares_what_its_modules_import() -> None:
    """contracts/pyproject.toml (the client distribution) must declare every third-party
    import of the package: pydantic for the models, aio-pika for the `client` extra, pytest and
    pytest-asyncio (plus aio-pika) for the `testing` extra, whose real backend alone needs the
    worker's asyncpg; OpenTelemetry's API only for the `tracing` extra; SQLAlchemy (with asyncpg,
    the driver its PostgreSQL statements are for) for the `inbox` extra, and aio-pika too for the
    `outbox` extra (its relay publishes)."""
    folder = Path(contracts.__file__).parent
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert [d.split(">")[0] for d in project["dependencies"]] == ["pydantic"]
    assert [d.split(">")[0] for d in extras["client"]] == ["aio-pika"]
    assert sorted(d.split(">")[0] for d in extras["testing"]) == [
        "aio-pika",
        "pytest",
        "pytest-asyncio",
    ]
    assert project["entry-points"]["pytest11"] == {"coupon": "contracts.testing.plugin"}
    assert project["scripts"] == {"coupon-contracts": "contracts.cli:main"}
    # The client injects the current trace only when OpenTelemetry is there (extra `tracing`).
    assert [d.split(">")[0] for d in extras["tracing"]] == ["opentelemetry-api"]
    assert [d.split(">")[0] for d in extras["inbox"]] == ["asyncpg", "sqlalchemy[asyncio]"]
    assert [d.split(">")[0] for d in extras["outbox"]] == [
        "aio-pika",
        "asyncpg",
        "sqlalchemy[asyncio]",
    ]

    def third_party(module: Path) -> set[str]:
        return _imported_roots(module) - set(sys.stdlib_module_names) - {"contracts"}

    client_modules = {"client.py", "subscription.py", "replay.py", "cli.py"}
    for module in sorted(folder.glob("*.py")):
        roots = third_party(module)
        if module.name == "amqp.py":  # to_amqp: the current trace, when installed
            assert "aio_pika" in roots and roots <= {"aio_pika", "pydantic", "opentelemetry"}
        elif module.name in client_modules:
            assert "aio_pika" in roots and roots <= {"aio_pika", "pydantic"}, module
        elif module.name == "inbox.py":
            assert roots == {"sqlalchemy"}, module
        else:
            assert roots <= {"pydantic", "pydantic_core"}, module
    for module in sorted((folder / "outbox").glob("*.py")):
        assert third_party(module) <= {"aio_pika", "sqlalchemy"}, module
    for module in sorted((folder / "testing").glob("*.py")):
        allowed = {"aio_pika", "pydantic", "pytest", "pytest_asyncio"}
        if module.name == "real.py":
            allowed.add("asyncpg")
        assert third_party(module) <= allowed, module
