"""The errors aftlib raises.

Every error derives from one root, :class:`AftError`, so ``except aftlib.AftError`` catches anything the
library raises on purpose. User mistakes are kept apart from runtime failures of an engine::

    AftError
    ├── ConfigError            a bad parameter, topology or config file (names the key path and file)
    │   └── TemplateError      a prompt template that is missing or fails to render
    ├── InputError             a bad conversation or input record (names where it came from)
    └── EngineError            an engine failed at run time (the third-party error is the ``__cause__``)
        ├── EngineTimeoutError     a request took longer than allowed
        ├── RateLimitError         the server asked us to slow down
        ├── ServerError            the server failed (5xx) or the connection dropped
        ├── ContextLengthError     the prompt does not fit the model's context
        └── QuorumError            a layer got fewer candidates than it needs (its agents failed)

``ConfigError`` and ``InputError`` are also ``ValueError`` so that code written against the standard
library's conventions keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._results import AgentFailure

__all__ = (
    "AftError",
    "ConfigError",
    "ContextLengthError",
    "EngineError",
    "EngineTimeoutError",
    "InputError",
    "QuorumError",
    "RateLimitError",
    "ServerError",
    "TemplateError",
)


class AftError(Exception):
    """The root of every error aftlib raises on purpose."""


class ConfigError(AftError, ValueError):
    """A parameter, topology or config file is wrong.

    Args:
        message: What is wrong.
        path: Where in the config, as a key path such as ``generation_params.n``.
        source: The file the config came from, if any.
    """

    def __init__(self, message: str, *, path: str | None = None, source: str | None = None) -> None:
        self.message = message
        self.path = path
        self.source = source
        where = ": ".join(part for part in (source, path) if part)
        super().__init__(f"{where}: {message}" if where else message)


class TemplateError(ConfigError):
    """A prompt template does not exist or cannot be rendered."""


class InputError(AftError, ValueError):
    """A conversation or an input record is malformed.

    Args:
        message: What is wrong.
        where: Where it is, such as ``data.jsonl:3`` or ``conversation[2].role``.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class EngineError(AftError):
    """An engine failed while generating. The original error, if any, is the ``__cause__``."""


class EngineTimeoutError(EngineError):
    """A generation request ran out of time."""


class RateLimitError(EngineError):
    """The engine refused a request because of a rate limit."""


class ServerError(EngineError):
    """The server failed (an HTTP 5xx) or could not be reached; trying again may help."""


class ContextLengthError(EngineError):
    """A request does not fit in the model's context window."""


class QuorumError(EngineError):
    """A layer got fewer candidates than it needs, because some of its agents failed or ran out of time.

    Args:
        message: What happened, naming the agents that gave no candidates.
        failures: One :class:`~aftlib.AgentFailure` per agent that gave no candidates.
    """

    def __init__(self, message: str, *, failures: tuple[AgentFailure, ...]) -> None:
        super().__init__(message)
        self.failures = failures
