"""MkDocs hook: render the Sphinx roles of aftlib's docstrings as links to the API page.

The docstrings write cross-references as ``:class:`Topology``` (Sphinx style). mkdocstrings renders them
as the literal role followed by code, so this hook rewrites ``:role:<code>Name</code>`` in the built HTML
into an optional autorefs reference: a link when ``Name`` is a public name documented on the API page,
plain code otherwise (no warning either way).
"""

from __future__ import annotations

import functools
import html
import importlib
import re
from typing import Any

_ROLE = re.compile(r":(?:class|meth|func|attr|data|exc|mod|obj):<code>(?P<target>[^<]+)</code>")
_MODULES = (
    "aftlib",
    "aftlib.presets",
    "aftlib.config",
    "aftlib.engines",
    "aftlib.testing",
    "aftlib.finetune",
)


@functools.cache
def _public_names() -> dict[str, str]:
    """Map each public short name to its documented identifier, the top-level package first."""
    names: dict[str, str] = {}
    for module_name in _MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in getattr(module, "__all__", ()):
            if not isinstance(getattr(module, name, None), type(module)):
                names.setdefault(name, f"{module_name}.{name}")
    return names


def _identifier(target: str) -> str | None:
    target = target.lstrip("~.")
    if target.startswith("aftlib."):
        return target
    head, _, rest = target.partition(".")
    full = _public_names().get(head)
    if full is None:
        return None
    return f"{full}.{rest}" if rest else full


def _replace(match: re.Match[str]) -> str:
    target = html.unescape(match["target"])
    shown = target.rsplit(".", 1)[-1] if target.startswith("~") else target.lstrip(".")
    code = f"<code>{html.escape(shown)}</code>"
    identifier = _identifier(target)
    if identifier is None:
        return code
    return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'


def on_page_content(html_text: str, **kwargs: Any) -> str:
    """Rewrite Sphinx roles in a page's HTML."""
    return _ROLE.sub(_replace, html_text)
