"""The one mapping of what a command raises to a message and an exit code, for every command."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from aftlib import ConfigError, EngineError, InputError, QuorumError
from aftlib._errors import MissingExtraError
from aftlib.cli._common import Interrupted, exit_status, run_async, run_sync


def raising(exc: BaseException) -> Callable[[], int]:
    def invoke() -> int:
        raise exc

    return invoke


@pytest.mark.parametrize(
    ("exc", "status", "line"),
    [
        (ConfigError("bad key", path="layers", source="a.yaml"), 2, "aftlib: error: a.yaml: layers: bad key"),
        (
            InputError("no such input file", where="in.jsonl"),
            2,
            "aftlib: error: in.jsonl: no such input file",
        ),
        (
            MissingExtraError("OpenAIEngine", "openai"),
            2,
            "aftlib: error: OpenAIEngine needs the openai extra: pip install 'aftlib[openai]'",
        ),
        (EngineError("engine 'e': died"), 1, "aftlib: failed: engine 'e': died"),
        (
            QuorumError("layer 0: 0 of 2 candidates", failures=[]),
            1,
            "aftlib: failed: layer 0: 0 of 2 candidates",
        ),
        (
            Interrupted(signal.SIGINT, "rerun to resume from o.jsonl"),
            130,
            "aftlib: interrupted by SIGINT; rerun to resume from o.jsonl",
        ),
        (Interrupted(signal.SIGTERM), 143, "aftlib: interrupted by SIGTERM"),
        (KeyboardInterrupt(), 130, "aftlib: interrupted by SIGINT"),
    ],
)
def test_errors_map_to_one_line_and_an_exit_code(
    capsys: pytest.CaptureFixture[str], exc: BaseException, status: int, line: str
) -> None:
    """Usage mistakes and missing extras exit 2, other aftlib errors 1, signals 128+N: one line each."""
    assert exit_status(raising(exc)) == status
    assert capsys.readouterr().err == line + "\n"


def test_a_command_returns_its_own_status() -> None:
    """What a command returns is the exit status; None is 0."""
    assert exit_status(lambda: 1) == 1
    assert exit_status(lambda: None) == 0


def test_an_exception_group_of_one_error_reaches_the_mapping_as_itself(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A lone error out of a command's task group is mapped as itself, not as an exception group."""

    async def work() -> int:
        import anyio

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 10)
            raise EngineError("engine 'e': cannot start")

    assert exit_status(lambda: run_async(work)) == 1
    assert capsys.readouterr().err == "aftlib: failed: engine 'e': cannot start\n"


def test_a_signal_stops_a_blocking_command_with_its_hint(capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM during a blocking command (training): exit 143 with the command's hint."""

    def work() -> int:
        signal.raise_signal(signal.SIGTERM)
        return 0

    assert exit_status(lambda: run_sync(work, hint="no checkpoint was written")) == 143
    assert capsys.readouterr().err == "aftlib: interrupted by SIGTERM; no checkpoint was written\n"


def test_a_signal_cancels_an_async_command(capsys: pytest.CaptureFixture[str]) -> None:
    """SIGINT during an async command cancels it (its cleanup runs) and exits 130 with the hint."""
    cleaned: list[bool] = []

    async def work() -> int:
        import anyio

        try:
            await anyio.sleep(0.1)
            signal.raise_signal(signal.SIGINT)
            await anyio.sleep(10)
        finally:
            cleaned.append(True)
        return 0

    assert exit_status(lambda: run_async(work, hint="rerun to resume from o.jsonl")) == 130
    assert cleaned == [True]
    assert capsys.readouterr().err == "aftlib: interrupted by SIGINT; rerun to resume from o.jsonl\n"
