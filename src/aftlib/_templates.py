"""Prompt templates: Jinja files that render the system message of a request.

A template receives the conversation's own system message as ``system`` (or None) and the previous
layer's texts as ``references``. What it renders becomes the request's system message, and the rest of
the conversation follows unchanged; an empty rendering means no system message. Conversation text and
drafts are only ever data passed to a template, never template source, and every template renders in a
sandboxed environment with undefined variables as errors.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import jinja2
import jinja2.sandbox
from attrs import field, frozen

from ._errors import TemplateError
from ._types import Message

__all__ = ("PromptTemplate", "as_template", "builtin_templates", "prompts_dir")


@functools.cache
def prompts_dir() -> Path:
    """The folder of the templates shipped with aftlib."""
    packaged = Path(str(resources.files("aftlib"))) / "prompts"
    if packaged.is_dir():
        return packaged
    # An editable install of a source checkout: the templates live at the repository root.
    return Path(__file__).resolve().parents[2] / "prompts"


def builtin_templates() -> tuple[str, ...]:
    """The names of the templates shipped with aftlib."""
    return tuple(sorted(p.stem for p in prompts_dir().glob("*.j2")))


@functools.cache
def _environment(folder: Path) -> jinja2.sandbox.SandboxedEnvironment:
    return jinja2.sandbox.SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )


def _load(name: str) -> jinja2.Template:
    if name.endswith(".j2") or "/" in name or "\\" in name:
        path = Path(name).expanduser().resolve()
        folder, file = path.parent, path.name
    else:
        folder, file = prompts_dir(), f"{name}.j2"
    try:
        return _environment(folder).get_template(file)
    except jinja2.TemplateNotFound:
        known = ", ".join(builtin_templates())
        raise TemplateError(
            f"template {name!r} not found (looked in {folder}); built-in templates: {known}; "
            "or give the path of a .j2 file"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{exc.filename or name}:{exc.lineno}: {exc.message}") from None


@frozen
class PromptTemplate:
    """A loaded prompt template.

    Args:
        name: A built-in template name (``aft_propose``, ``aft_aggregate``, ``aft_icl_propose``,
            ``moa_aggregate``, ``passthrough``) or the path of a ``.j2`` file.

    Raises:
        TemplateError: The template does not exist or does not parse.
    """

    name: str
    _template: jinja2.Template = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_template", _load(self.name))

    def render(self, *, system: str | None, references: Sequence[str]) -> str:
        """Render the system message for a conversation's own ``system`` message and ``references``."""
        try:
            return self._template.render(system=system, references=list(references))
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {self.name!r} failed to render: {exc}") from None

    def messages(self, conversation: Sequence[Message], references: Sequence[str]) -> list[Message]:
        """Build the request messages: the rendered system message, then the conversation's turns."""
        system = conversation[0].content if conversation and conversation[0].role == "system" else None
        turns = list(conversation[1:] if system is not None else conversation)
        rendered = self.render(system=system, references=references)
        return [Message("system", rendered), *turns] if rendered else turns


def as_template(value: str | PromptTemplate) -> PromptTemplate:
    """Accept a template or its name."""
    return value if isinstance(value, PromptTemplate) else PromptTemplate(value)
