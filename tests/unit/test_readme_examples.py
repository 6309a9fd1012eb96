"""The client guide's examples are files that tests run (tests/example_service), included
verbatim: a code block after `<!-- include: PATH -->` must be that file, byte for byte."""

from __future__ import annotations

import re
from pathlib import Path

from contracts.recording import read_messages

ROOT = Path(__file__).parents[2]
GUIDE = "docs/client-guide.md"
INCLUDE = re.compile(r"<!-- include: (?P<path>\S+) -->\n```python\n(?P<code>.*?)```", re.DOTALL)


def test_included_examples_are_the_files_the_tests_run() -> None:
    readme = (ROOT / GUIDE).read_text()
    included = {m["path"]: m["code"] for m in INCLUDE.finditer(readme)}
    assert set(included) == {
        "tests/example_service/example_checkout/publish.py",
        "tests/example_service/example_checkout/consume.py",
        "tests/example_service/tests/test_checkout.py",
    }
    for path, code in included.items():
        assert code == (ROOT / path).read_text(), f"docs/client-guide.md: {path} is out of date"


def test_the_sections_that_show_them_exist() -> None:
    readme = (ROOT / GUIDE).read_text()
    for title in ("Publish commands", "Consume events", "Replay a queue in your tests"):
        assert f"\n## {title}\n" in readme


def test_the_recording_format_example_is_a_valid_line() -> None:
    readme = (ROOT / GUIDE).read_text()
    section = readme.split("**The format**", 1)[1]
    line = section.split("```json\n", 1)[1].split("\n```", 1)[0]
    [message] = read_messages([line])
    assert message.properties.message_id == "bf-4" and message.body_bytes() == b'{"code":"BF-A"}'
