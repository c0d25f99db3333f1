"""The progress display: a live bar on a terminal, plain periodic lines elsewhere, whole last lines."""

from __future__ import annotations

import io
import sys

import anyio
import pytest
from rich.console import Console

from aftlib import RunStats
from aftlib.cli._display import Display


def test_plain_lines_come_every_interval_and_at_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    """Off a terminal: no line before the interval is up, one at the end, each ending with a newline."""
    stats = RunStats(total=3)
    with Display(console=Console(file=io.StringIO()), interval=60) as display:
        assert not display.live
        display.update(stats)
        stats.done = 2
        display.update(stats)
        assert capsys.readouterr().err == ""
        stats.done = 3
        display.update(stats)
    err = capsys.readouterr().err
    assert err.startswith("records 3/3 | ")
    assert err.endswith("\n")
    assert err.count("\n") == 1


def test_plain_lines_with_no_interval_follow_each_record(capsys: pytest.CaptureFixture[str]) -> None:
    """With a zero interval, each finished record prints its line, and the end prints the last again."""
    stats = RunStats(total=2)
    with Display(console=Console(file=io.StringIO()), interval=0) as display:
        display.update(stats)
        stats.done = 1
        display.update(stats)
        stats.failed = 1
        display.update(stats)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "records 1/2",
        "records 2/2 (1 failed)",
        "records 2/2 (1 failed)",
    ]


@pytest.mark.anyio
async def test_tick_prints_while_no_record_finishes(capsys: pytest.CaptureFixture[str]) -> None:
    """A run whose records take long still shows a plain line every interval."""
    stats = RunStats(total=5)
    display = Display(console=Console(file=io.StringIO()), interval=0.5)
    display.update(stats)
    with anyio.move_on_after(1.6):
        await display.tick()
    assert capsys.readouterr().err.count("records 0/5") >= 1


def test_a_bar_on_a_terminal_with_lines_above_it(capsys: pytest.CaptureFixture[str]) -> None:
    """On a terminal: a bar with done/total, failures, tok/s; printed and logged lines go above it whole."""
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    stats = RunStats(total=4)
    with Display(console=console) as display:
        assert display.live
        display.starting("starting 1 engine")
        display.update(stats)
        display.bad_line("in.jsonl:2: not valid JSON")
        print("2026-01-01 [warning  ] record failed", file=sys.stderr)  # a log line meanwhile
        stats.done, stats.failed, stats.completion_tokens = 2, 1, 900
        display.update(stats)
    text = screen.getvalue()
    assert "in.jsonl:2: not valid JSON\n" in text
    assert "[warning  ] record failed\n" in text
    assert "3/4 (1 failed)" in text
    assert "tok/s" in text
    assert text.replace("\x1b[?25h", "").endswith("\n")  # the cursor shown again after the last line
    assert capsys.readouterr().err == ""  # nothing went around the display


def test_a_command_stopped_while_engines_start_leaves_no_bar() -> None:
    """Stopped or failed before any record: the 'starting' line is cleared; the error line stands alone."""
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    with Display(console=console) as display:
        display.starting("starting 1 engine")
    last_frame = screen.getvalue().rsplit("\x1b[2K", 1)[-1]
    assert "starting" in screen.getvalue()
    assert "starting" not in last_frame
