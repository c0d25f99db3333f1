"""Prompt templates: the shipped ones, user files, and their errors."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from aftlib import InputError, Message, PromptTemplate, TemplateError
from aftlib._templates import builtin_templates, prompts_dir

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


JUDGE = """\
{#- A judge-style template: the outputs go into the user turn. -#}
{% block system %}You are a fair judge.{% endblock %}
{% block user -%}
Instruction: {{ user }}
Output (a): {{ output_1 }}
Output (b): {{ output_2 }}
Which output is better? Answer (a) or (b).
{%- endblock %}
"""


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def test_user_block_renders_the_last_user_turn_with_extra_variables(tmp_path: Path) -> None:
    """A user block replaces the last user turn's content; it sees the original text and extra variables.

    Without a system block the conversation's own system message passes through unchanged.
    """
    template = PromptTemplate(
        write(
            tmp_path,
            "select.j2",
            "{% block user %}{{ user }}\n{% for c in candidates %}[{{ loop.index }}] {{ c }}\n{% endfor %}"
            "Pick one of {{ references | length }}.{% endblock %}",
        )
    )
    assert template.renders_user
    assert not template.renders_system
    conversation = [Message("system", "Be brief."), Message("user", "2 + 2?")]
    messages = template.messages(conversation, ["r1", "r2"], candidates=["4", "five"])
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 2?\n[1] 4\n[2] five\nPick one of 2."},
    ]
    assert template.messages([Message("user", "q")], [], candidates=[]) == [
        {"role": "user", "content": "q\nPick one of 0."}
    ]


def test_system_and_user_blocks_render_together(tmp_path: Path) -> None:
    """With both blocks, the system block renders the system message and the user block the last turn."""
    template = PromptTemplate(write(tmp_path, "judge.j2", JUDGE))
    assert template.renders_system
    assert template.renders_user
    messages = template.messages([Message("user", "Say hi.")], [], output_1="Hi!", output_2="Hello.")
    assert messages == [
        {"role": "system", "content": "You are a fair judge."},
        {
            "role": "user",
            "content": "Instruction: Say hi.\nOutput (a): Hi!\nOutput (b): Hello.\n"
            "Which output is better? Answer (a) or (b).",
        },
    ]
    assert template.render(system=None, references=[]) == "You are a fair judge."


def test_empty_system_block_means_no_system_message(tmp_path: Path) -> None:
    """A system block that renders empty leaves the request without a system message, as today."""
    template = PromptTemplate(
        write(
            tmp_path,
            "t.j2",
            "{% block system %}{{ system or '' }}{% endblock %}{% block user %}<{{ user }}>{% endblock %}",
        )
    )
    assert template.messages([Message("user", "q")], []) == [{"role": "user", "content": "<q>"}]


def test_only_the_last_user_turn_changes(tmp_path: Path) -> None:
    """In a multi-turn conversation the earlier user and assistant turns go through unchanged."""
    template = PromptTemplate(write(tmp_path, "t.j2", "{% block user %}>> {{ user }}{% endblock %}"))
    conversation = [
        Message("system", "S"),
        Message("user", "first"),
        Message("assistant", "answer"),
        Message("user", "second"),
    ]
    assert template.messages(conversation, []) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": ">> second"},
    ]


@pytest.mark.parametrize("name", [n for n in builtin_templates() if not PromptTemplate(n).renders_user])
def test_builtin_templates_render_as_a_plain_jinja_render(name: str) -> None:
    """Every built-in template but the judges' (they have blocks) renders its whole body as the system.

    The system message is byte for byte what a plain Jinja render of the file gives, and every turn of the
    conversation goes through unchanged.
    """
    template = PromptTemplate(name)
    assert template.renders_system
    assert not template.renders_user
    plain = jinja2.Environment(
        loader=jinja2.FileSystemLoader(prompts_dir()), undefined=jinja2.StrictUndefined
    ).get_template(f"{name}.j2")
    refs = ["a", "b\nc {{ x }}"]
    turns = [Message("user", "u1"), Message("assistant", "a1"), Message("user", "u2")]
    for system in (None, "Own system."):
        conversation = [Message("system", system), *turns] if system else turns
        expected = plain.render(system=system, references=refs)
        assert template.render(system=system, references=refs) == expected
        head = [Message("system", expected)] if expected else []
        assert template.messages(conversation, refs, unused="x") == [*head, *turns]


def test_template_syntax_in_a_user_turn_is_data_in_the_user_block(tmp_path: Path) -> None:
    """A user turn or a variable holding `{{ 7*7 }}` reaches the model literally through the user block."""
    template = PromptTemplate(
        write(tmp_path, "t.j2", "{% block user %}Q: {{ user }} / {{ extra }}{% endblock %}")
    )
    messages = template.messages([Message("user", "{{ 7*7 }}")], [], extra="{% if true %}x{% endif %}")
    assert messages == [{"role": "user", "content": "Q: {{ 7*7 }} / {% if true %}x{% endif %}"}]


def test_undefined_variable_in_a_block_names_template_and_variable(tmp_path: Path) -> None:
    """An undefined variable in a block is a TemplateError naming the file, line, block and variable."""
    path = write(tmp_path, "judge.j2", JUDGE)
    with pytest.raises(
        TemplateError, match=r"judge\.j2:6: template '.*judge\.j2' failed .* user block.*'output_2'"
    ):
        PromptTemplate(path).messages([Message("user", "q")], [], output_1="x")


def test_text_outside_blocks_is_an_error(tmp_path: Path) -> None:
    """A template with system/user blocks and text or a tag outside them is refused when loaded.

    The error names the file and line; whitespace and comments outside blocks are allowed.
    """
    path = write(
        tmp_path, "mixed.j2", "{# fine #}\n\nYou are a judge.\n{% block user %}{{ user }}{% endblock %}\n"
    )
    with pytest.raises(TemplateError, match=r"mixed\.j2:3: .* must be inside \{% block system %\}"):
        PromptTemplate(path)
    tag = write(tmp_path, "tag.j2", "{% set x = 1 %}{% block system %}{{ x }}{% endblock %}")
    with pytest.raises(TemplateError, match=r"tag\.j2:1: "):
        PromptTemplate(tag)


def test_blocks_follow_extends_and_super(tmp_path: Path) -> None:
    """A template extending one with blocks inherits them; super() reaches the parent's block."""
    write(tmp_path, "judge.j2", JUDGE)
    child = write(
        tmp_path,
        "strict.j2",
        '{% extends "judge.j2" %}\n{% block system %}{{ super() }} Be strict.{% endblock %}\n',
    )
    template = PromptTemplate(child)
    assert template.renders_user
    messages = template.messages([Message("user", "q")], [], output_1="x", output_2="y")
    assert messages[0] == {"role": "system", "content": "You are a fair judge. Be strict."}
    assert messages[1]["content"].startswith("Instruction: q\nOutput (a): x\n")


def test_user_block_needs_a_user_turn(tmp_path: Path) -> None:
    """A template with a user block given a conversation without a user turn raises InputError."""
    template = PromptTemplate(write(tmp_path, "t.j2", "{% block user %}{{ user }}{% endblock %}"))
    with pytest.raises(InputError, match="renders the last user turn, but there is none"):
        template.messages([Message("system", "S")], [])


def test_conversation_variables_cannot_be_passed(tmp_path: Path) -> None:
    """Extra variables may not shadow system, references or user, which come from the conversation."""
    template = PromptTemplate(write(tmp_path, "judge.j2", JUDGE))
    with pytest.raises(TypeError, match="'user' come from the conversation"):
        template.messages([Message("user", "q")], [], user="other")


def test_user_block_renders_in_the_sandbox(tmp_path: Path) -> None:
    """Unsafe attribute access inside a user block is refused with a TemplateError."""
    template = PromptTemplate(
        write(tmp_path, "t.j2", "{% block user %}{{ user.__class__.__mro__ }}{% endblock %}")
    )
    with pytest.raises(TemplateError, match="failed to render its user block"):
        template.messages([Message("user", "q")], [])


def test_missing_parent_template_names_file_and_line(tmp_path: Path) -> None:
    """A template extending one that does not exist is refused when loaded, at the line of its extends."""
    path = write(tmp_path, "orphan.j2", '\n{% extends "nope.j2" %}\n')
    with pytest.raises(TemplateError, match=r"orphan\.j2:2: template 'nope\.j2' not found"):
        PromptTemplate(path)
