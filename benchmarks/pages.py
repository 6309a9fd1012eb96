"""Where rendered figures go: a result file found by its phase's prefix, and a section of a
docs page replaced between its markers (`<!-- name:start -->` … `<!-- name:end -->`). Every
renderer (table.py, growth_table.py, replicas_table.py, phase_tables.py) writes through here."""

from __future__ import annotations

from pathlib import Path

from benchmarks.config import RESULTS_DIR


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def newest(prefix: str, directory: Path = RESULTS_DIR) -> Path:
    """The newest `<prefix>-<UTC stamp>.json` (stamps sort as text); `-before` files, kept for
    a narrative's "before", are not taken."""
    found = sorted(
        path
        for path in directory.glob(f"{prefix}-*.json")
        if path.stem.removeprefix(f"{prefix}-")[:8].isdigit() and not path.stem.endswith("-before")
    )
    if not found:
        raise SystemExit(f"no {prefix}-<time>.json in {directory}: run make bench-{prefix}")
    return found[-1]


def replace_section(text: str, name: str, body: str, page: Path | str = "the page") -> str:
    """`text` with what lies between `name`'s markers replaced by `body`."""
    start, end = markers(name)
    if start not in text or end not in text:
        raise SystemExit(f"{page} has no {start} … {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def write_section(page: Path, name: str, body: str) -> None:
    page.write_text(replace_section(page.read_text(), name, body, page))
