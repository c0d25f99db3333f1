"""What a long command shows on standard error while it runs, kept apart from the run loop.

On a terminal: a live progress bar (rich) with records done of the total, failures, generated tokens
per second, the time spent and the time left; lines printed meanwhile (aftlib's logs, bad input lines)
appear above the bar instead of breaking it. Otherwise (a log file, a pipe): a plain line every
``interval`` seconds and one at the end. Either way the last line ends with a newline.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from ..run import RunStats

__all__ = ("Display",)


def _seconds(value: float) -> str:
    value = int(value)
    if value < 3600:
        return f"{value // 60}:{value % 60:02d}"
    return f"{value // 3600}:{value % 3600 // 60:02d}:{value % 60:02d}"


class Display:
    """Progress of a run on standard error: a live bar on a terminal, plain periodic lines elsewhere.

    Use it as a context manager around the run (or call :meth:`finish` when the records are done);
    pass :meth:`update` as the runner's ``on_progress`` and run :meth:`tick` beside the run for the
    periodic lines.

    Args:
        interval: Seconds between plain lines (when standard error is not a terminal).
        console: The rich console to draw on (standard error by default).
        live: Whether to draw a live bar; by default, when the console is a terminal.
    """

    def __init__(
        self, *, interval: float = 10.0, console: Console | None = None, live: bool | None = None
    ) -> None:
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.interval = interval
        self.live = self.console.is_terminal if live is None else live
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._stats: RunStats | None = None
        self._last = 0.0

    def __enter__(self) -> Display:
        if self.live:
            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                console=self.console,
                redirect_stdout=False,  # standard output carries the results
                redirect_stderr=True,  # log lines go above the bar
                transient=False,
            )
            self._bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish()

    def finish(self) -> None:
        """The records are done (or stopped): draw the last state once, ending with a newline."""
        if self._bar is not None:
            if self._stats is not None:
                self._refresh()
            elif self._task is not None:  # stopped while the engines started: no bar is left behind
                self._bar.remove_task(self._task)
                self._bar.live.transient = True
            self._bar.stop()  # leaves the bar drawn, the cursor on a new line
            self._bar = None
        elif self._stats is not None:
            self._plain()
        self._stats = None

    def starting(self, what: str) -> None:
        """Show that ``what`` (the engines) is starting, until :meth:`begin`."""
        if self._bar is not None:
            self._task = self._bar.add_task(what, total=None, counts="", rate="", eta="")

    def begin(self, stats: RunStats) -> None:
        """The records start: show the counters of ``stats`` from now on (:meth:`update` calls it)."""
        self._stats = stats
        self._last = time.monotonic()
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task("records", total=stats.total, counts="", rate="", eta="")
            self._refresh()

    def update(self, stats: RunStats) -> None:
        """The run started, or a record finished (the runner's ``on_progress``)."""
        if stats is not self._stats:
            self.begin(stats)
            return
        if self._bar is not None:
            self._refresh()
        elif time.monotonic() - self._last >= self.interval:
            self._plain()

    async def tick(self) -> None:
        """Refresh the bar twice a second, or print a plain line every ``interval``; runs until cancelled."""
        while True:
            await anyio.sleep(0.5 if self._bar is not None else 1.0)
            if self._stats is None:
                continue
            if self._bar is not None:
                self._refresh()
            elif time.monotonic() - self._last >= self.interval:
                self._plain()

    def echo(self, text: str) -> None:
        """Print a line (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def bad_line(self, error: Any) -> None:
        """A bad input line, as ``FILE:LINE: what is wrong`` (the runner's ``on_bad_line``)."""
        self.echo(str(error))

    def _refresh(self) -> None:
        stats, bar = self._stats, self._bar
        if stats is None or bar is None or self._task is None:
            return
        total = "?" if stats.total is None else f"{stats.total:,}"
        counts = f"{stats.finished:,}/{total}"
        counts += f" ({stats.failed:,} failed)" if stats.failed else ""
        counts += f" ({stats.bad:,} bad)" if stats.bad else ""
        eta = stats.eta
        bar.update(
            self._task,
            completed=stats.finished,
            total=stats.total,
            counts=counts,
            rate=f"{stats.rate:,.0f} tok/s",
            eta="" if eta is None else f"ETA {_seconds(eta)}",
        )

    def _plain(self) -> None:
        if self._stats is not None:
            self._last = time.monotonic()
            sys.stderr.write(self._stats.line() + "\n")
            sys.stderr.flush()
