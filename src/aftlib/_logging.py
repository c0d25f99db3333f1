"""Loggers for the library's own modules.

aftlib logs through structlog and never calls ``structlog.configure()``. When the application has
configured structlog, records go through its configuration (and ``structlog.testing.capture_logs``
sees them). When it has not, records go to the standard library logger of the module instead, so an
application that never set up logging sees only warnings and errors, as Python's ``logging`` does.

structlog is imported on first use, not when aftlib is imported (it loads asyncio and its subprocess
support, which ``import aftlib`` should not).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ("context", "get_logger")


def get_logger(name: str, **context: Any) -> Any:
    """A structlog logger for ``name`` with ``context`` bound; call it per operation, not at import.

    The structlog context variables of the moment (run id, record, layer and agent, bound with
    :func:`context` by the runner and the agents) are bound too, so every line carries them even where
    the application's structlog setup does not merge context variables.
    """
    import structlog

    context = {**structlog.contextvars.get_contextvars(), **context}
    if structlog.is_configured():
        return structlog.get_logger(name).bind(**context)
    return _stdlib_logger(name).bind(**context)


@contextmanager
def context(**values: Any) -> Iterator[None]:
    """Bind structlog context variables (run id, record, layer, agent) for the block, in this task."""
    import structlog

    with structlog.contextvars.bound_contextvars(**values):
        yield


@functools.cache
def _stdlib_logger(name: str) -> Any:
    import structlog

    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
