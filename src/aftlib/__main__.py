"""``python -m aftlib``: the command line."""

import importlib.util
import sys

from aftlib.cli import main

if __name__ == "__main__":  # vLLM starts its engine in spawned processes, which import this module
    # Spawned processes skip a main module named *.__main__: they import this one instead, which sets
    # vLLM's log level before vLLM is imported (see aftlib.cli._spawned).
    sys.modules["__main__"].__spec__ = importlib.util.find_spec("aftlib.cli._spawned")
    raise SystemExit(main())
