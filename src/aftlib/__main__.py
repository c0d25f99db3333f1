"""``python -m aftlib``: the command line."""

from aftlib.cli import main

if __name__ == "__main__":  # vLLM starts its engine in spawned processes, which import this module
    raise SystemExit(main())
