"""Loggers for the library's own modules.

aftlib logs through structlog and never calls ``structlog.configure()``. When the application has
configured structlog, records go through its configuration (and ``structlog.testing.capture_logs``
sees them). When it has not, records go to the standard library logger of the module instead, so an
application that never set up logging sees only warnings and errors, as Python's ``logging`` does.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import structlog

__all__ = ("get_logger",)

_STDLIB_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.processors.format_exc_info,
    structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True),
]


def get_logger(name: str, **context: Any) -> Any:
    """A structlog logger for ``name`` with ``context`` bound; call it per operation, not at import.

    The structlog context variables of the moment (run id, record, layer and agent, bound with
    ``structlog.contextvars.bound_contextvars`` by the runner and the agents) are bound too, so every line
    carries them even where the application's structlog setup does not merge context variables.
    """
    context = {**structlog.contextvars.get_contextvars(), **context}
    if structlog.is_configured():
        return structlog.get_logger(name).bind(**context)
    return _stdlib_logger(name).bind(**context)


@functools.cache
def _stdlib_logger(name: str) -> Any:
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=_STDLIB_PROCESSORS,
        wrapper_class=structlog.stdlib.BoundLogger,
    )
