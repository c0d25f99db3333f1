"""What every command shares: options, output setup, signals, and the one error-to-exit-code mapping.

Exit codes, the same for every command: 0 done; 1 a run-time failure (:class:`~aftlib.AftError`
other than a usage mistake, or records that failed); 2 a usage mistake (a click usage error, a
:class:`~aftlib.ConfigError`, an :class:`~aftlib.InputError`, a missing extra); 130 / 143 stopped by
SIGINT (Ctrl-C) / SIGTERM, with one line saying what to rerun.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
import sniffio
import structlog

from .._errors import AftError, ConfigError, InputError
from .._util import unwrap_group

__all__ = (
    "Interrupted",
    "configure_output",
    "quiet_engine_loggers",
    "exit_status",
    "input_option",
    "log_json_option",
    "output_option",
    "run_async",
    "run_sync",
    "verbose_option",
)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_VERBOSE = "aftlib.verbose"


class Interrupted(KeyboardInterrupt):
    """A command was stopped by SIGINT or SIGTERM; ``hint`` says what to rerun.

    A ``KeyboardInterrupt``, so code that catches ``Exception`` (a trainer's loop) lets it through.
    """

    def __init__(self, signum: int, hint: str | None = None) -> None:
        self.signum = signum
        self.hint = hint
        super().__init__(signal.Signals(signum).name)

    def with_hint(self, hint: str | None) -> Interrupted:
        """The same interruption, with what to rerun."""
        return Interrupted(self.signum, hint or self.hint)

    @property
    def line(self) -> str:
        """The one line the command prints."""
        name = signal.Signals(self.signum).name
        return f"aftlib: interrupted by {name}" + (f"; {self.hint}" if self.hint else "")


# --- the one wrapper: errors to messages and exit codes ---------------------------------------------


def exit_status(invoke: Callable[[], Any]) -> int:
    """Run a command and map what it raises to one message on standard error and an exit code."""
    try:
        result = invoke()
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:  # usage errors: exit 2
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aftlib: interrupted by SIGINT", err=True)
        return 130
    except Interrupted as exc:
        click.echo(exc.line, err=True)
        return 128 + exc.signum
    except KeyboardInterrupt:  # a Ctrl-C no handler of ours saw (outside a command's watch)
        click.echo("aftlib: interrupted by SIGINT", err=True)
        return 130
    except (ConfigError, InputError, ImportError) as exc:  # ImportError: a missing extra
        click.echo(f"aftlib: error: {exc}", err=True)
        return 2
    except AftError as exc:
        click.echo(f"aftlib: failed: {exc}", err=True)
        return 1
    return result if isinstance(result, int) else 0


# --- signals ---------------------------------------------------------------------------------------


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise :class:`Interrupted` (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_sync(work: Callable[[], T], *, hint: str | None = None) -> T:
    """Run a blocking command; SIGINT or SIGTERM stops it with :class:`Interrupted` carrying ``hint``."""
    try:
        with signals_raise():
            return work()
    except Interrupted as exc:
        raise exc.with_hint(hint) from None


def run_async(work: Callable[[], Awaitable[T]], *, hint: str | None = None) -> T:
    """Run a long async command on asyncio, stopped cleanly by SIGINT or SIGTERM.

    A signal receiver, active before ``work`` starts (so also while engines start), cancels ``work``:
    requests in flight are aborted and engines close, shielded. Then :class:`Interrupted` is raised
    with ``hint``, whatever the cancelled work raised (an exception group included). A second signal
    while the work winds down is ignored. A task group's lone error reaches the caller as itself.
    """
    if _in_an_event_loop():
        # Called from code that already runs an event loop in this thread (a notebook, a test session):
        # run the command on a thread of its own. Only the main thread can watch signals; there the
        # caller's own Ctrl-C handling applies.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(lambda: anyio.run(work, backend="asyncio")).result()
    try:
        return anyio.run(_watched, work, backend="asyncio")
    except Interrupted as exc:
        raise exc.with_hint(hint) from None


def _in_an_event_loop() -> bool:
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


async def _watched(work: Callable[[], Awaitable[T]]) -> T:
    stopped: list[int] = []
    result: list[T] = []
    work_scope = anyio.CancelScope()

    async def watch(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(*SIGNALS) as received:
            task_status.started()
            async for signum in received:
                if not stopped:
                    stopped.append(signum)
                    work_scope.cancel()  # aborts every request in flight; engines still close, shielded

    try:
        with unwrap_group():
            async with anyio.create_task_group() as tg:
                await tg.start(watch)
                try:
                    with work_scope:
                        result.append(await work())
                finally:
                    tg.cancel_scope.cancel()
    except BaseException:
        if stopped:  # whatever the cancelled work raised, the user asked it to stop
            raise Interrupted(stopped[0]) from None
        raise
    if stopped:
        raise Interrupted(stopped[0])
    return result[0]


# --- output: logs and engine noise -----------------------------------------------------------------


class _Stderr:
    """Standard error as it is at each write, so a progress display that redirects it keeps its place."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_ENGINE_LEVELS = {0: "ERROR", 1: "WARNING", 2: "INFO"}


def configure_output(verbose: int, log_json: bool = False) -> None:
    """Set up logging: aftlib's own lines, and the engines' (vLLM, transformers, torch) kept quiet.

    vLLM reads ``VLLM_LOGGING_LEVEL`` when it is imported (engines import it lazily, and its engine
    processes inherit the environment): ERROR by default, WARNING with ``-v``, INFO with ``-vv``,
    DEBUG with ``-vvv``; without ``-v`` a level set in the environment is kept. Without ``-v``,
    third-party Python warnings are ignored too. aftlib logs warnings and errors by default, INFO with
    ``-v`` or ``--log-json``, DEBUG with ``-vv``.
    """
    level = _ENGINE_LEVELS.get(verbose, "DEBUG")
    for key in ("VLLM_LOGGING_LEVEL", "TORCH_CPP_LOG_LEVEL"):
        if verbose or key not in os.environ:
            os.environ[key] = "INFO" if key == "TORCH_CPP_LOG_LEVEL" and level == "DEBUG" else level
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # standard output is for results
    quiet_engine_loggers()
    if verbose == 0:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")  # the engines' child processes
        warnings.filterwarnings("ignore", module=r"^(?!aftlib\b)")
    ours = logging.DEBUG if verbose >= 2 else logging.INFO if verbose or log_json else logging.WARNING
    renderer: Any = (
        structlog.processors.JSONRenderer() if log_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(ours),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def shield_engine_process() -> None:
    """In a process vLLM spawned for an aftlib command, block SIGINT; elsewhere do nothing.

    Ctrl-C reaches every process of the terminal's process group. vLLM's engine processes would each
    stop on it with tracebacks (and leave shared memory to the resource tracker), while aftlib, which
    handles the signal in the main process, shuts them down in order. A spawned process imports the
    main module first, as ``__mp_main__``, and a blocked signal stays blocked when vLLM installs its own
    handler; SIGTERM, which aftlib's shutdown sends, still works.
    """
    if "__mp_main__" in sys.modules and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def quiet_engine_loggers() -> None:
    """Apply ``VLLM_LOGGING_LEVEL`` to vLLM's logger now, for the lines vLLM logs before configuring it.

    vLLM sets up its logging after its first imports have logged (on CPU: a Triton warning), and
    those lines would reach standard error through Python's last-resort handler. ``python -m aftlib``
    calls this in vLLM's engine processes too (they import the main module first).
    """
    level = os.environ.get("VLLM_LOGGING_LEVEL")
    if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        logging.getLogger("vllm").setLevel(level)


# --- shared options --------------------------------------------------------------------------------


def _count_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    root = ctx.find_root()
    root.meta[_VERBOSE] = root.meta.get(_VERBOSE, 0) + (value or 0)


def verbose_option(func: F) -> F:
    """``-v/--verbose`` (repeatable): engine warnings with ``-v``, engine info lines with ``-vv``.

    Accepted before the command (``aftlib -v run``) and after it (``aftlib run -v``).
    """
    return click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_count_verbose,
        help="Show engine warnings and aftlib's info lines (-vv: engine info lines too).",
    )(func)


def verbosity(ctx: click.Context) -> int:
    """How many ``-v`` the command line has, before and after the command."""
    count: int = ctx.find_root().meta.get(_VERBOSE, 0)
    return count


def log_json_option(func: F) -> F:
    """``--log-json``: log JSON lines to standard error."""
    return click.option("--log-json", is_flag=True, help="Log JSON lines to standard error.")(func)


def input_option(*, required: bool, help: str) -> Callable[[F], F]:
    """``--input FILE``."""
    return click.option(
        "--input", "input_path", type=click.Path(path_type=Path), required=required, metavar="FILE", help=help
    )


def output_option(*, required: bool, help: str) -> Callable[[F], F]:
    """``--output FILE``."""
    return click.option(
        "--output", "output", type=click.Path(path_type=Path), required=required, metavar="FILE", help=help
    )


def check_output(output: Path) -> None:
    """Refuse an output that cannot be written, before anything starts: a folder, or in a missing folder.

    Raises:
        ConfigError: The output is a directory, or its folder does not exist.
    """
    if output.is_dir():
        raise ConfigError("the output is a directory, not a file", source=str(output))
    if not output.parent.is_dir():
        raise ConfigError(f"the output's folder {output.parent} does not exist", source=str(output))
