"""The ``aftlib`` command line: a click app, one module per command.

Built on click rather than typer: commands and options are declared explicitly (no type-hint magic),
and it is one dependency (typer adds itself on top of click). Each command lives in its own module
(``_run``: ``run`` and ``demo``; ``_merge``: ``merge``; ``_data``: ``data``; ``_train``: ``train``);
options used by several commands, the signal handling of long commands and the one mapping of
errors to messages and exit codes live in ``_common``; the progress display in ``_display``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from ._common import exit_status, quiet_engine_loggers, shield_engine_process, signals_raise, verbose_option
from ._data import data
from ._eval import eval_command
from ._merge import merge_command
from ._run import demo, run
from ._serve import serve_command
from ._sweep import sweep_command
from ._train import train_command

__all__ = ("app", "main")

_ENVIRONMENT = (
    "VLLM_LOGGING_LEVEL",
    "VLLM_LOGGING_STREAM",
    "TORCH_CPP_LOG_LEVEL",
    "TRANSFORMERS_VERBOSITY",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS",
    "PYTHONWARNINGS",
)


# vLLM's engine processes import the main module (python -m aftlib, or the aftlib script), and so this
# package, before vLLM: its first lines then keep to the level the command chose, and Ctrl-C is left
# to the main process.
shield_engine_process()
quiet_engine_loggers()


@click.group(
    "aftlib",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    help="Propose-and-aggregate LLM inference (Mixture-of-Agents, aggregation fine-tuning).",
)
@verbose_option
def app() -> None:
    """``aftlib``."""


app.add_command(run)
app.add_command(demo)
app.add_command(merge_command)
app.add_command(data)
app.add_command(train_command)
app.add_command(eval_command)
app.add_command(sweep_command)
app.add_command(serve_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0: done (every record answered); 1: a run-time failure, or some records failed; 2: bad usage,
    config or input (nothing ran); 130 / 143: stopped by SIGINT (Ctrl-C) / SIGTERM, with the output
    left resumable.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    saved = {key: os.environ.get(key) for key in _ENVIRONMENT}

    def invoke() -> object:
        with app.make_context("aftlib", args) as ctx:
            return app.invoke(ctx)

    try:
        with signals_raise():  # until a command watches for signals itself
            return exit_status(invoke)
    finally:
        for key, value in saved.items():  # the quiet settings are for this command only
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
