"""The errors aftlib raises.

Every error derives from one root, :class:`AftError`, so ``except aftlib.AftError`` catches anything the
library raises on purpose. User mistakes are kept apart from runtime failures of an engine::

    AftError
    ├── ConfigError            a bad parameter, topology or config file (names the key path and file)
    │   └── TemplateError      a prompt template that is missing or fails to render
    ├── InputError             a bad conversation or input record (names where it came from)
    ├── MissingExtraError      an optional dependency is not installed (also an ``ImportError``)
    └── EngineError            an engine failed at run time (the third-party error is the ``__cause__``)
        ├── EngineTimeoutError     a request took longer than allowed
        ├── RateLimitError         the server asked us to slow down
        ├── ServerError            the server failed (5xx) or the connection dropped
        ├── ContextLengthError     the prompt does not fit the model's context
        └── QuorumError            a layer got fewer candidates than it needs (its agents failed)

``ConfigError`` and ``InputError`` are also ``ValueError`` so that code written against the standard
library's conventions keeps working. Engine errors carry structured fields where the engine gave them:
:attr:`EngineError.status` (an HTTP status) and :attr:`RateLimitError.retry_after` (seconds).
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
    "MissingExtraError",
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


class MissingExtraError(AftError, ImportError):
    """An optional dependency is not installed; the message says which extra installs it.

    Args:
        what: What needs the dependency, such as ``"OpenAIEngine"``.
        extra: The aftlib extra that installs it, such as ``"openai"``.
        module: The module that failed to import.
    """

    def __init__(self, what: str, extra: str, module: str | None = None) -> None:
        self.what = what
        self.extra = extra
        self.module = module
        missing = f" (cannot import {module})" if module else ""
        super().__init__(
            f"{what} needs the {extra} extra: pip install 'aftlib[{extra}]'{missing}", name=module
        )


class EngineError(AftError):
    """An engine failed while generating. The original error, if any, is the ``__cause__``.

    Args:
        message: What failed, naming the engine.
        status: The HTTP status of the failed request, when there was one.
    """

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EngineTimeoutError(EngineError):
    """A generation request ran out of time."""


class RateLimitError(EngineError):
    """The engine refused a request because of a rate limit.

    Args:
        message: What happened.
        retry_after: Seconds the server asked to wait before trying again, when it said.
        status: The HTTP status (429 for OpenAI-compatible servers).
    """

    def __init__(
        self, message: str = "", *, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


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
