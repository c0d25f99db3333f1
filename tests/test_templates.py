"""Prompt templates: the shipped ones, user files, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from aftlib import Message, PromptTemplate, TemplateError
from aftlib._templates import builtin_templates

MOA_INSTRUCTION = (
    "You have been provided with a set of responses from various open-source models to the latest user "
    "query. Your task is to synthesize these responses into a single, high-quality response. It is crucial "
    "to critically evaluate the information provided in these responses, recognizing that some of it may "
    "be biased or incorrect. Your response should not simply replicate the given answers but should offer "
    "a refined, accurate, and comprehensive reply to the instruction. Ensure your response is "
    "well-structured, coherent, and adheres to the highest standards of accuracy and reliability.\n\n"
    "Responses from models:"
)


def test_builtin_templates_are_shipped() -> None:
    """The three templates of the design and the passthrough template are found by name."""
    assert {"aft_propose", "aft_aggregate", "moa_aggregate", "passthrough"} <= set(builtin_templates())


def test_moa_template_matches_together_moa() -> None:
    """moa_aggregate renders the Together MoA system prompt; an existing system message comes first."""
    template = PromptTemplate("moa_aggregate")
    refs = ["a", "b\nc"]
    expected = MOA_INSTRUCTION + "".join(f"\n{i + 1}. {r}" for i, r in enumerate(refs))
    assert template.render(system=None, references=refs) == expected
    conversation = [Message("system", "Be brief."), Message("user", "hi")]
    messages = template.messages(conversation, refs)
    assert messages == [
        {"role": "system", "content": "Be brief.\n\n" + expected},
        {"role": "user", "content": "hi"},
    ]


def test_aft_propose_keeps_a_users_system_message() -> None:
    """The aft_propose system message is a newline, or the conversation's own system message."""
    template = PromptTemplate("aft_propose")
    assert template.messages([Message("user", "q")], [])[0] == {"role": "system", "content": "\n"}
    own = template.messages([Message("system", "S"), Message("user", "q")], [])
    assert own == [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]


def test_passthrough_sends_the_conversation_unchanged() -> None:
    """The passthrough template adds no system message."""
    conversation = [Message("user", "q")]
    assert PromptTemplate("passthrough").messages(conversation, ["x"]) == conversation


def test_missing_template_names_it_and_the_choices() -> None:
    """An unknown template name is a TemplateError listing the built-in names."""
    with pytest.raises(TemplateError, match=r"'nope' not found.*aft_aggregate"):
        PromptTemplate("nope")


def test_user_template_file_renders_in_a_sandbox(tmp_path: Path) -> None:
    """A user's .j2 file renders; unsafe attribute access is refused with a TemplateError."""
    good = tmp_path / "mine.j2"
    good.write_text("Drafts: {{ references | join(' | ') }}")
    assert PromptTemplate(str(good)).render(system=None, references=["a", "b"]) == "Drafts: a | b"
    evil = tmp_path / "evil.j2"
    evil.write_text("{{ references.__class__.__mro__ }}")
    with pytest.raises(TemplateError, match="failed to render"):
        PromptTemplate(str(evil)).render(system=None, references=[])


def test_template_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A broken template is a TemplateError with the file and line of the error."""
    bad = tmp_path / "bad.j2"
    bad.write_text("line one\n{% if %}")
    with pytest.raises(TemplateError, match=r"bad\.j2:2"):
        PromptTemplate(str(bad))


def test_undefined_variable_is_an_error(tmp_path: Path) -> None:
    """StrictUndefined: a template using an unknown variable fails loudly, not with empty text."""
    path = tmp_path / "undef.j2"
    path.write_text("{{ nothing_here }}")
    with pytest.raises(TemplateError, match="nothing_here"):
        PromptTemplate(str(path)).render(system=None, references=[])
