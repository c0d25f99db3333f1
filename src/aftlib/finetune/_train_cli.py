"""``aftlib train``: fine-tune an aggregator from a YAML config."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ("add_parser",)


def add_parser(commands: Any) -> None:
    """Add the ``train`` command to the ``aftlib`` subcommands."""
    train = commands.add_parser("train", help="fine-tune a model on aggregation data")
    train.set_defaults(handler=_not_ready)


def _not_ready(args: argparse.Namespace) -> int:
    raise NotImplementedError("aftlib train is being built")
