"""``aftlib data``: build aggregation training data from the command line."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ("add_parser",)


def add_parser(commands: Any) -> None:
    """Add the ``data`` command to the ``aftlib`` subcommands."""
    data = commands.add_parser("data", help="build aggregation fine-tuning data")
    data.set_defaults(handler=_not_ready)


def _not_ready(args: argparse.Namespace) -> int:
    raise NotImplementedError("aftlib data is being built")
