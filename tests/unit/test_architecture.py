"""The layout says the architecture: imports go down the floors of docs/architecture.md, and no
two modules import each other, however indirectly."""

from __future__ import annotations

import ast
from pathlib import Path

WORKER = Path(__file__).resolve().parents[2] / "worker"

# Higher floors may import lower ones; packages on one floor do not import each other.
FLOORS: dict[str, int] = {
    "entrypoints": 5,
    "observability": 4,
    "testing": 4,
    "messaging": 3,
    "db": 3,
    "app": 2,
    "domain": 1,
    "logs": 2,  # reads the log format from settings
    "settings": 1,
    "addresses": 0,  # service URLs: several nodes, heartbeats, redaction (pydantic, yarl)
    "keepalive": 0,  # TCP keepalive for both service connections (db and messaging); stdlib only
}
ARCHITECTURE = WORKER.parent / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    parts = path.relative_to(WORKER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def worker_imports(path: Path) -> set[str]:
    """Every `worker.*` module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("worker."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module != "worker" and not node.module.startswith("worker."):
                continue
            for alias in node.names:  # `from worker.db import migrations` names a module
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if _is_module(submodule) else node.module)
    return found


def _is_package(name: str) -> bool:
    return (WORKER.joinpath(*name.split(".")[1:]) / "__init__.py").is_file()


def _is_module(name: str) -> bool:
    path = WORKER.joinpath(*name.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    modules = {
        module_name(path): worker_imports(path)
        for path in WORKER.rglob("*.py")
        # Every module, top-level ones included (not the package's __init__ / __main__, nor
        # the alembic scripts that alembic runs itself).
        if "alembic" not in path.parts
        and not (path.parent == WORKER and path.stem in ("__init__", "__main__"))
    }
    return {name: {m for m in imported if m in modules} for name, imported in modules.items()}


def floor(module: str) -> tuple[str, int]:
    package = module.split(".")[1]
    return package, FLOORS[package]


def test_every_package_and_top_level_module_has_a_floor() -> None:
    assert {module.split(".")[1] for module in graph()} <= set(FLOORS)


def test_the_architecture_page_names_every_module() -> None:
    """docs/architecture.md walks the rooms: a module it does not name is one a newcomer cannot
    find there. Named by file name (`intake.py`, `working_set.py`)."""
    page = ARCHITECTURE.read_text()
    unnamed = sorted(
        module
        for module in graph()
        if f"{module.rsplit('.', 1)[-1]}.py" not in page and not _is_package(module)
    )
    assert unnamed == [], f"docs/architecture.md does not mention {unnamed}"


def test_the_architecture_page_points_only_inside_the_repository() -> None:
    page = ARCHITECTURE.read_text()
    assert "../shared" not in page and "](/" not in page


def test_imports_go_down_the_floors() -> None:
    upward = []
    for module, imported in graph().items():
        package, level = floor(module)
        for target in imported:
            target_package, target_level = floor(target)
            if target_package != package and target_level >= level:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_every_error_for_an_operator_shares_the_one_base_the_cli_catches() -> None:
    from worker.app.failures import OperatorError
    from worker.db.migrations import SchemaMismatch
    from worker.entrypoints.operator_errors import StartupError
    from worker.messaging.topology import TopologyError

    for error in (SchemaMismatch, TopologyError, StartupError):
        assert issubclass(error, OperatorError), error
