"""The benchmark's progress: a bar on a terminal, plain lines when piped."""

from __future__ import annotations

import io

from benchmarks.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_piped_output_is_plain_lines_at_the_start_every_tenth_and_the_end() -> None:
    out = io.StringIO()
    progress = Progress(stream=out)
    with progress.phase("worker create", 100) as phase:
        for _ in range(20):
            phase.advance(5)
    progress.say("== create: done")
    lines = out.getvalue().splitlines()
    assert lines[0] == "worker create: 0/100"
    assert "worker create: 50/100" in lines
    assert lines[-2].startswith("worker create: 100/100 in ")
    assert lines[-1] == "== create: done"
    assert "\x1b[" not in out.getvalue()


def test_a_terminal_gets_a_bar_that_ends_complete_and_messages_below_it() -> None:
    out = Terminal()
    progress = Progress(stream=out)
    with progress.phase("ceiling redeem", 40) as phase:
        phase.update_to(40)
    progress.say("== redeem: [not markup]")
    text = out.getvalue()
    assert "ceiling redeem" in text and "40/40" in text and "100%" in text
    assert text.rstrip().endswith("== redeem: [not markup]")
