"""Files in and out, each written once: JSON records, YAML, atomic writes, staged folders, locks, prompts.

Everything aftlib reads or writes goes through here:

- :func:`iter_json`: the values of a JSONL file (streamed) or a JSON array file, each with its line, so
  a bad one is reported as ``FILE:LINE: what is wrong``.
- :func:`read_yaml`: a YAML file, safely, with the line of a syntax error.
- :func:`atomic_write`, :func:`write_text_atomic`, :func:`write_json_atomic`: a file appears whole or
  not at all (written beside its target, then moved into place).
- :func:`staged_dir`: the same for a folder (a model, a checkpoint).
- :func:`side_path`: the files that live beside an output (``OUT.summary.json``, ...).
- :func:`exclusive_lock`: one process at a time per output (an OS lock, released when the process dies).
- :func:`fingerprint`: a short digest of JSON-ready settings.
- :func:`render_prompt`, :func:`prompt_token_ids`: a chat rendered with a tokenizer's chat template
  exactly as the engines send it, so training and inference prompts cannot drift.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from attrs import frozen

from ._errors import ConfigError, InputError
from ._templates import tool_instructions
from ._tools import Tool, ToolCall, render_calls
from ._types import Message

__all__ = (
    "JsonItem",
    "atomic_write",
    "exclusive_lock",
    "file_fingerprint",
    "fingerprint",
    "iter_json",
    "prompt_token_ids",
    "read_yaml",
    "render_prompt",
    "side_path",
    "staged_dir",
    "write_json_atomic",
    "write_text_atomic",
)

PathLike = str | os.PathLike[str]


# --- JSON records ---------------------------------------------------------------------------------


@frozen
class JsonItem:
    """One value read from a JSONL line or a JSON array item.

    Attributes:
        line: The line it starts on (1-based; for a JSON array, the item's position).
        text: Its source text (for error files).
        value: The decoded value, or None when it is not valid JSON.
        error: What is wrong with it when it is not valid JSON, else None.
        offset: For a JSONL line, the byte offset where it starts in the file (to read it again
            later with one seek); None for a JSON array item.
    """

    line: int
    text: str
    value: Any = None
    error: str | None = None
    offset: int | None = None

    @property
    def ok(self) -> bool:
        """True when the text is valid JSON."""
        return self.error is None


def _open_binary(path: PathLike, what: str) -> IO[bytes]:
    file = Path(path)
    if file.is_dir():
        raise InputError(f"the {what} is a directory, not a file", where=str(path))
    try:
        return open(file, "rb")
    except FileNotFoundError:
        raise InputError(f"no such {what} file", where=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read the {what}: {exc.strerror or exc}", where=str(path)) from None


def _json_array(text: str, source: str) -> Iterator[JsonItem]:
    """The items of a JSON array, each with its position and source text, without a second parse."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    index = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos < len(text) and text[pos] == "]":
            return
        if index and text[pos : pos + 1] == ",":
            pos += 1
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InputError(f"not a valid JSON array: {exc.msg}", where=f"{source}:{exc.lineno}") from None
        index += 1
        yield JsonItem(index, text[pos:end], value)
        pos = end


_BOM = codecs.BOM_UTF8


def _first_char(handle: IO[bytes]) -> bytes:
    """The first byte that is not whitespace (or a UTF-8 byte order mark), or b"" for a blank file."""
    while True:
        byte = handle.read(1)
        if not byte or (not byte.isspace() and byte not in _BOM):
            return byte


def iter_json(path: PathLike, *, what: str = "input") -> Iterator[JsonItem]:
    """Read the values of a JSONL file line by line (streamed), or of a file holding one JSON array.

    The file is UTF-8 (a byte order mark is allowed). Blank lines are skipped. A line that is not
    valid JSON (or not UTF-8) comes out with its :attr:`JsonItem.error` and the reading goes on.

    Args:
        path: The file.
        what: What the file is, for error messages ("input", "training data", ...).

    Raises:
        InputError: The file is missing, a directory or unreadable, or a JSON array in it is broken
            (then no item can be trusted).
    """
    source = str(path)
    with _open_binary(path, what) as handle:
        first = _first_char(handle)
        if not first:
            return
        handle.seek(0)
        if first == b"[":
            try:
                text = handle.read().decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise InputError(f"the {what} is not UTF-8 text: {exc.reason}", where=source) from None
            yield from _json_array(text, source)
            return
        offset = 0
        for number, raw in enumerate(handle, start=1):
            start, offset = offset, offset + len(raw)
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if raw.isspace():
                continue
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                yield JsonItem(number, text, None, f"not UTF-8 text: {exc.reason}", start)
                continue
            try:
                yield JsonItem(number, line, json.loads(line), None, start)
            except json.JSONDecodeError as exc:
                yield JsonItem(number, line, None, f"not valid JSON: {exc.msg} (column {exc.colno})", start)


# --- YAML -----------------------------------------------------------------------------------------


def read_yaml(path: PathLike, what: str = "the config") -> Any:
    """Read a YAML file safely.

    Raises:
        ConfigError: The file is missing or unreadable, or is not valid YAML (naming the line).
    """
    import yaml

    source = str(path)
    if Path(path).is_dir():
        raise ConfigError(f"{what} is a directory, not a file", source=source)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}", source=source) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {problem}", source=where) from None


# --- writing --------------------------------------------------------------------------------------


def side_path(output: PathLike, suffix: str) -> Path:
    """A file that lives beside ``output``.

    Example:
        ``side_path("out.jsonl", ".summary.json")`` is ``out.jsonl.summary.json``.
    """
    path = Path(output)
    return path.with_name(path.name + suffix)


@contextlib.contextmanager
def atomic_write(path: PathLike, *, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """Write a text file that appears whole or not at all.

    The text goes to a temporary file beside ``path``, which replaces ``path`` when the block ends
    without an error; on an error it is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_write(tmp / "out.json") as handle:  # doctest: +SKIP
        ...     handle.write("{}")
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as handle:
            yield handle
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as handle:
        handle.write(text)


def write_json_atomic(path: PathLike, data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` as JSON (UTF-8, not ASCII-escaped, newline-terminated) atomically."""
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=indent, default=str) + "\n")


@contextlib.contextmanager
def staged_dir(target: PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``target``, then move it into place.

    Yields the staging folder (created, readable by all). When the block ends without an error, the
    staging folder becomes ``target``; on an error it is removed and ``target`` is left as it was.
    With ``replace``, an existing ``target`` is moved aside first and removed once the new folder is
    in place (and put back if the move fails). Without it, an empty ``target`` folder is replaced.

    Raises:
        FileExistsError: ``target`` exists (and is not an empty folder) and ``replace`` is false.
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; models and checkpoints are read by others too
        yield staging
        old = None
        if replace and (final.exists() or final.is_symlink()):
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent)) / final.name
            os.replace(final, old)
        try:
            os.replace(staging, final)
        except OSError as exc:
            if old is not None:
                os.replace(old, final)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise FileExistsError(exc.errno, f"{final} exists", str(final)) from None
            raise
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# --- locks and fingerprints -----------------------------------------------------------------------


@contextlib.contextmanager
def exclusive_lock(output: PathLike, *, what: str = "output") -> Iterator[None]:
    """Hold an exclusive OS lock on ``output`` (through ``OUT.lock``) for the block.

    The lock is the kernel's (``flock``): it is released when the process exits, even by ``kill -9``,
    so a crash never leaves a stale lock. The holder's process id is written into the lock file, so a
    second process can say who holds it.

    Raises:
        ConfigError: Another process holds the lock (the error names its process id).
    """
    import fcntl

    lock = side_path(output, ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"{what} {output} is in use by another aftlib process (pid {holder}); wait for it to "
                "finish or stop it",
                path=str(output),
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us removes the file as it lets go: a lock on that removed file holds nothing.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def fingerprint(data: Any) -> str:
    """A short, stable digest of JSON-ready ``data`` (keys sorted): the same settings, the same digest."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_fingerprint(path: PathLike) -> str:
    """A short digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# --- prompts --------------------------------------------------------------------------------------


def render_prompt(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Tool] = (),
    generation_prompt: bool = True,
) -> str:
    """The prompt text of ``messages``: the tokenizer's chat template with the generation prompt.

    This is the text an engine sends for a request and the prompt a training example is trained
    after; tokenize it with ``add_special_tokens=False`` (the template writes BOS itself).

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template.
        messages: The chat, as ``{"role", "content"}`` mappings (or :class:`~aftlib.Message`, whose tool
            calls and tool results come along).
        tools: Tools the model may call: given to a chat template that renders tools (one that names
            ``tools``); for any other, aftlib's tool instructions (``prompts/tools/hermes.j2``) join
            the system message and earlier calls are written into their turns as ``<tool_call>`` tags.
        generation_prompt: Whether to open the assistant's turn; false renders the chat as it stands
            (a training example, its answer included).
    """
    rows = [m.to_template() if isinstance(m, Message) else {"role": m["role"], "content": m["content"]}
            for m in messages]  # fmt: skip
    extra: dict[str, Any] = {}
    if tools and "tools" in str(getattr(tokenizer, "chat_template", None) or ""):
        extra["tools"] = [t.to_openai() for t in tools]
    elif tools or any("tool_calls" in row for row in rows):
        rows = tools_in_text(rows, tool_instructions(tools) if tools else None)
    text: str = tokenizer.apply_chat_template(
        rows, tokenize=False, add_generation_prompt=generation_prompt, **extra
    )
    return text


def tools_in_text(rows: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """Turns for a chat template that knows no tools.

    The instructions join the system message, and each call is written into its assistant turn as the
    model writes calls.
    """
    out = []
    for row in rows:
        calls = row.pop("tool_calls", None)
        row.pop("tool_call_id", None)
        if calls:
            tagged = render_calls(
                [ToolCall.of(c["function"]["name"], c["function"]["arguments"]) for c in calls]
            )
            row["content"] = f"{row['content']}\n{tagged}" if row["content"] else tagged
        out.append(row)
    if instructions is not None:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{instructions}"}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out


def prompt_token_ids(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Tool] = ()
) -> list[int]:
    """The token ids of :func:`render_prompt`, without added special tokens (BOS is never doubled)."""
    ids: list[int] = tokenizer.encode(
        render_prompt(tokenizer, messages, tools=tools), add_special_tokens=False
    )
    return ids
