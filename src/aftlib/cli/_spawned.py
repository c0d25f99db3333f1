"""What a process that vLLM spawns for ``python -m aftlib`` runs first: vLLM's logger at the chosen level.

vLLM logs a few lines while it is imported, before it sets up its logging; a spawned process imports
its parent's main module first, so the ``aftlib`` script quiets them through the CLI package. Python
skips a main module named ``*.__main__`` there, so ``python -m aftlib`` points its spawned processes
at this module instead.
"""

from __future__ import annotations

from ._common import quiet_engine_loggers, shield_engine_process

shield_engine_process()
quiet_engine_loggers()
