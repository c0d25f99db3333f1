"""Prompt templates: Jinja files that render the system message of a request, and its last user turn.

A template receives the conversation's own system message as ``system`` (or None), the previous layer's
texts as ``references``, the text of the conversation's last user turn as ``user``, and any extra
variables its caller passes (a judge's ``output_1`` and ``output_2``, for example).

A template without blocks renders the system message with its whole body; the conversation follows
unchanged. A template may instead define the named blocks ``{% block system %}`` and ``{% block user %}``:
the ``system`` block renders the system message, the ``user`` block renders the content of the last user
turn, and a part without a block is left as the conversation has it. In a template with blocks, nothing
but whitespace and comments may stand outside them. Either way an empty system rendering means no system
message.

Conversation text and drafts are only ever data passed to a template, never template source, and every
template renders in a sandboxed environment with undefined variables as errors.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes
import jinja2.sandbox
from attrs import field, frozen

from ._errors import InputError, TemplateError
from ._tools import Tool, canonical
from ._types import Message

__all__ = ("PromptTemplate", "as_template", "builtin_templates", "prompts_dir", "tool_instructions")

#: The named blocks that render a message, in the order of the request.
_PARTS = ("system", "user")
#: The variables a template always receives from the conversation.
_RESERVED = frozenset(("system", "references", "user"))


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


def tool_instructions(tools: Sequence[Tool]) -> str:
    """How to call ``tools``, for a model whose chat template does not render tools (``prompts/tools/``)."""
    template = _environment(prompts_dir()).get_template("tools/hermes.j2")
    return template.render(tools=[canonical(t.to_openai()) for t in tools])


def _syntax_error(exc: jinja2.TemplateSyntaxError, name: str) -> TemplateError:
    return TemplateError(f"{exc.filename or name}:{exc.lineno}: {exc.message}")


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
        raise _syntax_error(exc, name) from None


def _parse(template: jinja2.Template) -> jinja2.nodes.Template:
    """The syntax tree of a loaded template, parsed again from its source (a compiled one keeps none)."""
    env = template.environment
    assert env.loader is not None
    assert template.name is not None
    source, filename, _ = env.loader.get_source(env, template.name)
    return env.parse(source, template.name, filename)


def _parents(template: jinja2.Template, name: str) -> tuple[jinja2.Template, ...] | None:
    """The templates that ``template`` extends, nearest first; None when a parent's name is computed."""
    chain: list[jinja2.Template] = []
    current = template
    while (extends := _parse(current).find(jinja2.nodes.Extends)) is not None:
        parent = extends.template
        if not isinstance(parent, jinja2.nodes.Const) or not isinstance(parent.value, str):
            return None
        if len(chain) > 32:
            raise TemplateError(f"template {name!r}: its {{% extends %}} chain does not end")
        try:
            current = current.environment.get_template(parent.value, current.name)
        except jinja2.TemplateNotFound:
            raise TemplateError(
                f"{current.filename}:{extends.lineno}: template {parent.value!r} not found "
                f"(looked in {_folder(current)})"
            ) from None
        except jinja2.TemplateSyntaxError as exc:
            raise _syntax_error(exc, parent.value) from None
        chain.append(current)
    return tuple(chain)


def _folder(template: jinja2.Template) -> str:
    return str(Path(template.filename).parent) if template.filename else "the template's folder"


def _outside_blocks(template: jinja2.Template) -> int | None:
    """The line of the first thing outside a block that is not whitespace, or None if there is none."""
    for node in _parse(template).body:
        if isinstance(node, (jinja2.nodes.Block, jinja2.nodes.Extends)):
            continue
        if not isinstance(node, jinja2.nodes.Output):
            return node.lineno
        for child in node.nodes:
            if not isinstance(child, jinja2.nodes.TemplateData):
                return child.lineno
            if text := child.data.strip():
                return child.lineno + child.data[: child.data.index(text)].count("\n")
    return None


def _where(exc: BaseException) -> str | None:
    """``FILE:LINE`` of the innermost template frame of a render error, if Jinja recorded one."""
    where = None
    tb = exc.__traceback__
    while tb is not None:
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


@frozen
class PromptTemplate:
    """A loaded prompt template.

    A template without blocks renders the system message. A template with the named blocks
    ``{% block system %}`` and/or ``{% block user %}`` renders the system message from the first and the
    content of the conversation's last user turn from the second; see :meth:`messages`.

    Args:
        name: A built-in template name (``aft_propose``, ``aft_aggregate``, ``aft_icl_propose``,
            ``moa_aggregate``, ``passthrough``) or the path of a ``.j2`` file.

    Raises:
        TemplateError: The template does not exist or does not parse, or it has ``system``/``user``
            blocks and text outside them.
    """

    name: str
    _template: jinja2.Template = field(init=False, repr=False, eq=False)
    _parents: tuple[jinja2.Template, ...] = field(init=False, repr=False, eq=False)
    _blocks: frozenset[str] = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        template = _load(self.name)
        parents = _parents(template, self.name)
        if parents is None:
            # A computed parent name: only the template's own blocks are known before rendering.
            if frozenset(_PARTS).intersection(template.blocks):
                raise TemplateError(
                    f"template {self.name!r} has system/user blocks and extends a template whose name is "
                    "computed; give the parent's name as a string"
                )
            parents = ()
        blocks = frozenset(_PARTS).intersection(name for each in (template, *parents) for name in each.blocks)
        if blocks:
            for each in (template, *parents):
                line = _outside_blocks(each)
                if line is not None:
                    raise TemplateError(
                        f"{each.filename or self.name}:{line}: template {self.name!r} has "
                        f"{' and '.join(f'a {b} block' for b in _PARTS if b in blocks)}, so everything "
                        "must be inside {% block system %} or {% block user %} (outside them, only "
                        "whitespace and comments); found text or a tag outside them"
                    )
        object.__setattr__(self, "_template", template)
        object.__setattr__(self, "_parents", parents)
        object.__setattr__(self, "_blocks", blocks)

    @property
    def renders_system(self) -> bool:
        """Whether the template renders the system message (a template without blocks does)."""
        return not self._blocks or "system" in self._blocks

    @property
    def renders_user(self) -> bool:
        """Whether the template renders the content of the conversation's last user turn."""
        return "user" in self._blocks

    def render(self, *, system: str | None, references: Sequence[str], **variables: Any) -> str:
        """Render the system message.

        Args:
            system: The conversation's own system message, or None.
            references: The previous layer's texts.
            **variables: Extra variables for the template, such as ``user`` (the last user turn's text).

        Returns:
            The system message, or ``system`` unchanged (``""`` for None) if the template has blocks but
            no ``system`` block.

        Raises:
            TemplateError: The template fails to render, for example on an undefined variable.
        """
        values = {**variables, "system": system, "references": list(references)}
        if not self.renders_system:
            return system or ""
        return self._render("system", values)

    def render_user(
        self, *, user: str, system: str | None, references: Sequence[str], **variables: Any
    ) -> str:
        """Render the content of the last user turn with the template's ``user`` block.

        Args:
            user: The original text of the conversation's last user turn.
            system: The conversation's own system message, or None.
            references: The previous layer's texts.
            **variables: Extra variables for the template.

        Returns:
            The new content of the last user turn, or ``user`` unchanged if the template has no
            ``user`` block.

        Raises:
            TemplateError: The template fails to render, for example on an undefined variable.
        """
        if not self.renders_user:
            return user
        values = {**variables, "user": user, "system": system, "references": list(references)}
        return self._render("user", values)

    def messages(
        self, conversation: Sequence[Message], references: Sequence[str], **variables: Any
    ) -> list[Message]:
        """Build the request messages for a conversation and the previous layer's texts.

        The template sees ``system`` (the conversation's own system message, or None), ``references``,
        ``user`` (the text of the last user turn, or None if there is none) and ``variables``. The
        request is the system message the template renders (none if the rendering is empty), then the
        conversation's other turns, with the last user turn's content rendered by the ``user`` block if
        the template has one.

        Args:
            conversation: The conversation, optionally starting with a system turn.
            references: The previous layer's texts.
            **variables: Extra variables for the template (not ``system``, ``references`` or ``user``,
                which come from the conversation).

        Raises:
            TemplateError: The template fails to render, for example on an undefined variable.
            InputError: The template has a ``user`` block and the conversation has no user turn.
            TypeError: ``variables`` names ``system``, ``references`` or ``user``.
        """
        if clash := sorted(_RESERVED.intersection(variables)):
            raise TypeError(
                f"PromptTemplate.messages(): the variable(s) {', '.join(map(repr, clash))} come from the "
                "conversation and cannot be passed"
            )
        system = conversation[0].content if conversation and conversation[0].role == "system" else None
        turns = list(conversation[1:] if system is not None else conversation)
        last = next((i for i in range(len(turns) - 1, -1, -1) if turns[i].role == "user"), None)
        user = turns[last].content if last is not None else None
        if self.renders_user:
            if last is None:
                raise InputError(f"template {self.name!r} renders the last user turn, but there is none")
            content = self.render_user(
                user=turns[last].content, system=system, references=references, **variables
            )
            turns[last] = Message("user", content)
        rendered = self.render(system=system, references=references, user=user, **variables)
        return [Message("system", rendered), *turns] if rendered else turns

    def _render(self, part: str, values: Mapping[str, Any]) -> str:
        template = self._template
        try:
            if not self._blocks:
                return template.render(values)
            context = template.new_context(dict(values))
            # Jinja's own inheritance: the nearest definition of a block first, its parents after it
            # (for ``super()``), as the compiled ``{% extends %}`` of a template sets them up.
            for parent in self._parents:
                for name, block in parent.blocks.items():
                    context.blocks.setdefault(name, []).append(block)
            try:
                return "".join(context.blocks[part][0](context))
            except Exception:
                template.environment.handle_exception()
        except jinja2.TemplateError as exc:
            what = "" if not self._blocks else f" its {part} block"
            where = _where(exc)
            prefix = f"{where}: " if where else ""
            raise TemplateError(f"{prefix}template {self.name!r} failed to render{what}: {exc}") from None


def as_template(value: str | PromptTemplate) -> PromptTemplate:
    """Accept a template or its name."""
    return value if isinstance(value, PromptTemplate) else PromptTemplate(value)
