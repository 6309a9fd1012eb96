"""tests/README.md is the tests' index: it names every folder of tests/ and every module of
tests/support/ (and tests/fakes.py), so a new one cannot arrive unexplained."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_folder_and_support_module_is_in_the_index() -> None:
    index = (TESTS / "README.md").read_text()
    folders = [
        f"`{path.name}/`"
        for path in TESTS.iterdir()
        if path.is_dir() and not path.name.startswith((".", "_"))
    ]
    modules = [f"`support/{path.name}`" for path in (TESTS / "support").glob("[!_]*.py")]
    missing = [name for name in [*folders, *modules, "`fakes.py`"] if name not in index]
    assert not missing, f"tests/README.md does not mention {missing}"
