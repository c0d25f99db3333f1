"""Aggregation fine-tuning with TRL's SFT trainer, or by reinforcement with its GRPO trainer.

:class:`TrainConfig` holds the settings (read from YAML with :meth:`TrainConfig.load`), :func:`train`
runs TRL's ``SFTTrainer`` over aggregation data (``method: sft``, the default) or its ``GRPOTrainer``
over RL records (``method: grpo``, see :mod:`._grpo`) and writes a checkpoint that ``VLLMEngine`` serves.

Each training record is a JSON object with a ``messages`` list whose last turn is the assistant's
answer (the output of ``aftlib data``). The loss covers that last assistant turn only: the prompt is
rendered with the model's chat template exactly as ``VLLMEngine`` renders it at inference
(``add_generation_prompt=True``, no extra special tokens), and its tokens get the label ``-100``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import define, field, frozen

from .._errors import ConfigError, InputError, MissingExtraError
from .._io import iter_json, read_yaml, render_prompt, staged_dir
from .._logging import get_logger
from ..config._converter import at, config_class, structure
from ._grpo import GrpoSettings, RlRecord, grpo_rows, prompt_text, read_rl_records, reward_functions

__all__ = ("LoraSettings", "LossPoint", "TrainConfig", "TrainResult", "train")


MARKER = "aftlib-train.json"
"""The file :func:`train` writes into every checkpoint it makes: what was trained, how, and the losses."""

_ROLES = frozenset(("system", "user", "assistant"))

# SFTConfig arguments that TrainConfig sets from its own keys, and the key to use instead.
_OWN_ARGUMENTS = {
    "output_dir": "output_dir",
    "num_train_epochs": "epochs",
    "max_steps": "max_steps",
    "learning_rate": "learning_rate",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "max_length": "max_length",
    "seed": "seed",
    "logging_steps": "logging_steps",
    "bf16": "bf16",
}
# SFTConfig arguments that would change which tokens are trained: the loss is on the answer turn only.
_LOSS_ARGUMENTS = ("assistant_only_loss", "completion_only_loss", "dataset_text_field", "chat_template_path")
# GRPOConfig arguments that GrpoSettings sets, and the key to use instead.
_GRPO_ARGUMENTS = {
    "num_generations": "grpo.group_size",
    "beta": "grpo.beta",
    "max_completion_length": "grpo.max_completion_length",
    "temperature": "grpo.temperature",
    "reward_weights": "grpo.format_reward",
}
_METHODS = ("sft", "grpo")


# --- validators -------------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _positive_int(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"expected a positive integer, got {_kind(value)} {value!r}", path=attribute.name)


def _optional_positive_int(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _positive_int(instance, attribute, value)


def _positive_number(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not _number(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"expected a positive number, got {_kind(value)} {value!r}", path=attribute.name)


def _seed(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"expected an integer >= 0, got {_kind(value)} {value!r}", path=attribute.name)


def _boolean(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {_kind(value)} {value!r}", path=attribute.name)


def _optional_boolean(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _boolean(instance, attribute, value)


def _text(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"expected a non-empty string, got {_kind(value)} {value!r}", path=attribute.name)


def _path_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _paths(value: Any) -> Any:
    """One path or a list of paths, as a tuple of strings (anything else is left for the validator)."""
    if isinstance(value, str | os.PathLike):
        return (os.fspath(value),)
    if isinstance(value, list | tuple):
        return tuple(_path_text(v) for v in value)
    return value


def _data_paths(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(
            f"expected a JSONL file or a list of them, got {_kind(value)} {value!r}", path=attribute.name
        )


def _modules(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _target_modules(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    ok = (isinstance(value, str) and value) or (
        isinstance(value, tuple) and value and all(isinstance(v, str) and v for v in value)
    )
    if not ok:
        raise ConfigError(
            f"expected 'all-linear' or a list of module names, got {_kind(value)} {value!r}",
            path=attribute.name,
        )


def _dropout(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not _number(value) or not 0 <= value < 1:
        raise ConfigError(f"expected a number in [0, 1), got {_kind(value)} {value!r}", path=attribute.name)


def _extra(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"expected a mapping of SFTConfig arguments, got {_kind(value)}", path="extra")
    for key in value:
        if key in _OWN_ARGUMENTS:
            raise ConfigError(f"set this with the top-level key {_OWN_ARGUMENTS[key]!r}", path=f"extra.{key}")
        if key in _GRPO_ARGUMENTS:
            raise ConfigError(f"set this with the key {_GRPO_ARGUMENTS[key]!r}", path=f"extra.{key}")
        if key in _LOSS_ARGUMENTS:
            raise ConfigError(
                "aftlib train always puts the loss on the last assistant turn only; this argument would "
                "change that",
                path=f"extra.{key}",
            )


def _as_dict(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


# --- configuration ----------------------------------------------------------------------------------

# The names TRL, transformers and peft give some settings, for a better hint on an unknown key.
_ALIASES = {
    **_OWN_ARGUMENTS,
    "model_name": "model",
    "model_name_or_path": "model",
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
}


@config_class("the LoRA settings", aliases=_ALIASES, typed=False)
@frozen
class LoraSettings:
    """LoRA through peft: train low-rank adapters instead of every weight.

    Args:
        r: The rank of the adapters (``LoraConfig.r``). vLLM serves adapters up to its ``max_lora_rank``
            (16 by default).
        alpha: The scaling numerator (``LoraConfig.lora_alpha``).
        dropout: Dropout on the adapters' input (``LoraConfig.lora_dropout``).
        target_modules: ``"all-linear"`` (every linear layer but the output head) or a list of module
            names such as ``["q_proj", "v_proj"]``.
    """

    r: int = field(default=16, validator=_positive_int)
    alpha: float = field(default=32, validator=_positive_number)
    dropout: float = field(default=0.05, validator=_dropout)
    target_modules: str | tuple[str, ...] = field(
        default="all-linear", converter=_modules, validator=_target_modules
    )


def _lora_settings(value: Any) -> Any:
    """A mapping of LoRA settings (as in YAML) becomes :class:`LoraSettings`, its keys checked."""
    if not isinstance(value, Mapping):
        return value
    return structure(value, LoraSettings, path="lora")


def _method(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in _METHODS:
        raise ConfigError(
            f"method is 'sft' (supervised) or 'grpo' (reinforcement), got {_kind(value)} {value!r}",
            path="method",
        )


def _grpo_settings(value: Any) -> Any:
    if isinstance(value, Mapping):
        with at("grpo"):
            return structure(dict(value), GrpoSettings)
    return value


def _grpo_type(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, GrpoSettings):
        raise ConfigError(f"expected a mapping of GRPO settings, got {_kind(value)} {value!r}", path="grpo")


def _lora_type(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, LoraSettings):
        raise ConfigError(
            f"expected a mapping of LoRA settings (r, alpha, dropout, target_modules) or null, "
            f"got {_kind(value)} {value!r}",
            path="lora",
        )


@config_class("a training config", aliases=_ALIASES, typed=False)
@frozen
class TrainConfig:
    """What :func:`train` trains, on what, and where it writes the checkpoint.

    The names follow TRL and transformers (``SFTConfig``); ``extra`` passes any other ``SFTConfig``
    argument through unchanged. Relative paths are relative to the working directory.

    Args:
        model: The model to fine-tune: a folder or a model name that transformers resolves.
        data: A JSONL file of training records, or a list of them (the output of ``aftlib data``).
        output_dir: The folder of the checkpoint. It must not exist, be empty, or hold an earlier
            checkpoint of ``aftlib train`` (which is replaced once the new one is complete).
        epochs: Passes over the data (``num_train_epochs``); ignored when ``max_steps`` is set.
        max_steps: Optimizer steps in all, overriding ``epochs``.
        learning_rate: The peak learning rate (linear decay). LoRA usually wants ~1e-4, full fine-tuning
            ~1e-5.
        batch_size: Records per device per step (``per_device_train_batch_size``).
        gradient_accumulation_steps: Batches per optimizer step.
        max_length: The longest record in tokens; longer records are skipped, counted and reported
            (never cut: a cut answer would teach the model to stop mid-sentence).
        seed: The seed of the weights of LoRA adapters, the data order and dropout.
        logging_steps: Log the loss every so many steps.
        lora: LoRA settings, or ``None`` to train every weight.
        merge: With LoRA, write the base model with the adapters merged in (served like any model);
            ``False`` writes only the adapter (served on the base model as a LoRA adapter).
        bf16: Mixed precision in bfloat16; ``None`` turns it on when a CUDA GPU supports it.
        extra: More ``SFTConfig`` (or ``GRPOConfig``) arguments (``warmup_steps``,
            ``lr_scheduler_type``, ``gradient_checkpointing``, ``report_to``, ...), checked against it.
        method: ``"sft"`` (supervised, on ``aftlib data`` examples) or ``"grpo"`` (reinforcement, on
            ``aftlib data rl`` records; ``batch_size`` then counts completions, a multiple of the group
            size, and ``max_length`` bounds the prompt).
        grpo: The GRPO settings (:class:`GrpoSettings`), with ``method: grpo`` only; its defaults when left
            out.

    Raises:
        ConfigError: A value has the wrong type or is out of range; the error names the key.
    """

    model: str = field(converter=_path_text, validator=_text)
    data: tuple[str, ...] = field(converter=_paths, validator=_data_paths)
    output_dir: str = field(converter=_path_text, validator=_text)
    epochs: float = field(default=3.0, validator=_positive_number)
    max_steps: int | None = field(default=None, validator=_optional_positive_int)
    learning_rate: float = field(default=2e-5, validator=_positive_number)
    batch_size: int = field(default=1, validator=_positive_int)
    gradient_accumulation_steps: int = field(default=8, validator=_positive_int)
    max_length: int = field(default=4096, validator=_positive_int)
    seed: int = field(default=42, validator=_seed)
    logging_steps: int = field(default=10, validator=_positive_int)
    lora: LoraSettings | None = field(default=None, converter=_lora_settings, validator=_lora_type)
    merge: bool = field(default=True, validator=_boolean)
    bf16: bool | None = field(default=None, validator=_optional_boolean)
    extra: dict[str, Any] = field(factory=dict, converter=_as_dict, validator=_extra)
    method: str = field(default="sft", validator=_method)
    grpo: GrpoSettings | None = field(default=None, converter=_grpo_settings, validator=_grpo_type)

    def __attrs_post_init__(self) -> None:
        if self.lora is None and not self.merge:
            raise ConfigError(
                "merge: false keeps a LoRA adapter apart, so it needs lora settings", path="merge"
            )
        if self.grpo is not None and self.method != "grpo":
            raise ConfigError("'grpo' settings go with method: grpo", path="grpo")
        if self.method == "grpo" and self.batch_size % self.settings.group_size:
            raise ConfigError(
                f"with method: grpo, batch_size counts completions: {self.batch_size} is not a multiple of "
                f"the group size {self.settings.group_size}",
                path="batch_size",
            )

    @property
    def settings(self) -> GrpoSettings:
        """The GRPO settings: those given, or the defaults."""
        return self.grpo if self.grpo is not None else GrpoSettings()

    @classmethod
    def from_mapping(cls, data: Any, *, source: str | None = None) -> TrainConfig:
        """Build a config from a mapping (such as parsed YAML), checking every key.

        Args:
            data: The settings; ``lora`` may be a mapping of :class:`LoraSettings` keys.
            source: The file the settings came from, for error messages.

        Raises:
            ConfigError: A key is unknown or missing, or a value is wrong; the error names the key.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a training config is a mapping of keys, got {_kind(data)}", source=source)
        return structure(data, cls, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a training config from a YAML file.

        Raises:
            ConfigError: The file is missing, unreadable or not YAML, or a key is unknown or wrong.
        """
        return cls.from_mapping(read_yaml(path), source=os.fspath(path))


# --- results ----------------------------------------------------------------------------------------


@frozen
class LossPoint:
    """The training loss logged at one step.

    Args:
        step: The optimizer step (from 1).
        max_steps: The steps of the whole run.
        epoch: Passes over the data so far (fractional).
        loss: The mean loss over the answer tokens since the previous log.
        learning_rate: The learning rate at this step.
        reward: With GRPO, the mean reward of the completions since the previous log.
    """

    step: int
    max_steps: int
    epoch: float
    loss: float
    learning_rate: float
    reward: float | None = None


Checkpoint = Literal["full", "merged", "adapter"]


@frozen
class TrainResult:
    """What :func:`train` did and wrote.

    Args:
        output_dir: The checkpoint folder.
        checkpoint: ``"full"`` (every weight trained), ``"merged"`` (LoRA merged into the base weights)
            or ``"adapter"`` (a peft LoRA adapter to serve on ``base_model``).
        base_model: The model that was fine-tuned.
        steps: The optimizer steps taken.
        losses: The losses logged along the way.
        train_loss: The mean loss over the whole run.
        records: The training records used.
        kinds: How many records of each ``kind`` (``"aggregation"``, ``"direct"``, ...) were used.
        skipped: Where the records that were longer than ``max_length`` are (``FILE:LINE``).
        elapsed: Wall time in seconds, loading and saving included.
    """

    output_dir: Path
    checkpoint: Checkpoint
    base_model: str
    steps: int
    losses: tuple[LossPoint, ...]
    train_loss: float
    records: int
    kinds: dict[str, int]
    skipped: tuple[str, ...]
    elapsed: float

    @property
    def first_loss(self) -> float | None:
        """The first logged loss (``None`` when no step was logged)."""
        return self.losses[0].loss if self.losses else None

    @property
    def last_loss(self) -> float | None:
        """The last logged loss (``None`` when no step was logged)."""
        return self.losses[-1].loss if self.losses else None


# --- data -------------------------------------------------------------------------------------------


@frozen
class TrainingRecord:
    """One checked training record: its chat (the answer last) and where it was read."""

    where: str
    messages: tuple[dict[str, str], ...]
    kind: str


def _read_records(paths: Sequence[str]) -> list[TrainingRecord]:
    """Read and check every record; a malformed one is an :class:`InputError` naming its line."""
    records: list[TrainingRecord] = []
    for path in paths:
        for item in iter_json(path, what="training data"):
            where = f"{path}:{item.line}"
            if item.error is not None:
                raise InputError(item.error, where=where)
            records.append(_training_record(item.value, where))
    if not records:
        raise InputError("no training records", where=", ".join(paths))
    return records


def _training_record(record: Any, where: str) -> TrainingRecord:
    if not isinstance(record, dict):
        raise InputError(f"a training record is a JSON object, got {_kind(record)}", where=where)
    messages = record.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise InputError("a training record needs 'messages': a list of at least two turns", where=where)
    turns: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise InputError("a turn is an object with 'role' and 'content'", where=at)
        for key in ("role", "content"):
            if key not in message:
                raise InputError(f"missing {key!r}: a turn is an object with 'role' and 'content'", where=at)
        role, content = message["role"], message["content"]
        if role not in _ROLES:
            raise InputError(f"unknown role {role!r}; expected system, user or assistant", where=at)
        if not isinstance(content, str):
            raise InputError(f"'content' must be a string, got {_kind(content)}", where=at)
        turns.append({"role": role, "content": content})
    if turns[-1]["role"] != "assistant":
        raise InputError("the last turn must be the assistant's answer (the training target)", where=where)
    if not any(t["role"] == "user" for t in turns[:-1]):
        raise InputError("a training record needs a user turn before the answer", where=where)
    kind = record.get("kind", "unknown")
    return TrainingRecord(where=where, messages=tuple(turns), kind=str(kind))


def _encode(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids and labels of one record: the loss is on the last (assistant) turn only.

    The prompt (every turn but the last) is rendered as ``VLLMEngine`` renders a request, with the
    generation prompt and no added special tokens, so training sees the very tokens inference sends.
    The answer is the rest of the rendering of the whole conversation (its end-of-turn token
    included, so the model learns to stop), tokenized on its own, as the model would generate it.
    """
    prompt = render_prompt(tokenizer, messages[:-1])
    whole = render_prompt(tokenizer, messages, generation_prompt=False)
    if not whole.startswith(prompt):
        raise ConfigError(
            "the model's chat template renders a conversation's prompt differently when the answer follows, "
            "so the answer turn cannot be told apart from the prompt",
            path="model",
        )
    prompt_ids: list[int] = tokenizer.encode(prompt, add_special_tokens=False)
    answer_ids: list[int] = tokenizer.encode(whole[len(prompt) :], add_special_tokens=False)
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


# --- training ---------------------------------------------------------------------------------------


def _import(name: str) -> Any:
    import importlib
    import warnings

    try:
        with warnings.catch_warnings():
            # TRL warns at import that it was tested with older vLLM releases; its vLLM path is not used
            warnings.filterwarnings("ignore", message="TRL currently supports vLLM", category=UserWarning)
            return importlib.import_module(name)
    except ImportError as exc:
        raise MissingExtraError("aftlib train (with torch, e.g. from the cpu extra)", "train", name) from exc


def _sft_config(config: TrainConfig, output_dir: Path, *, source: str | None = None) -> Any:
    """TRL's ``SFTConfig`` (or ``GRPOConfig``) for ``config``; a bad ``extra`` argument names its key."""
    trl = _import("trl")
    torch = _import("torch")
    grpo = config.method == "grpo"
    kind = trl.GRPOConfig if grpo else trl.SFTConfig
    known = {f.name for f in dataclasses.fields(kind) if f.init}
    for key in config.extra:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown {kind.__name__} argument {key!r}{hint}", path=f"extra.{key}", source=source
            )
    cuda = bool(torch.cuda.is_available())
    bf16 = config.bf16 if config.bf16 is not None else cuda and bool(torch.cuda.is_bf16_supported())
    arguments: dict[str, Any] = {
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "dataloader_pin_memory": cuda,
        # TRL turns it on to save GPU memory; on CPU it only slows training down.
        "gradient_checkpointing": cuda,
        **config.extra,
        "output_dir": str(output_dir),
        "num_train_epochs": float(config.epochs),
        "max_steps": config.max_steps if config.max_steps is not None else -1,
        "learning_rate": float(config.learning_rate),
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_length": config.max_length,
        "seed": config.seed,
        "logging_steps": config.logging_steps,
        "bf16": bf16,
    }
    if grpo:
        settings = config.settings
        del arguments["max_length"]  # bounds the prompts here, checked when they are rendered
        arguments.update(
            num_generations=settings.group_size,
            beta=settings.beta,
            max_completion_length=settings.max_completion_length,
            temperature=settings.temperature,
            reward_weights=reward_functions(settings)[1],
        )
        # TRL's own generation unless asked (extra: {use_vllm: true, vllm_mode: colocate} on a GPU)
        arguments.setdefault("use_vllm", False)
        arguments.setdefault("use_cpu", not cuda)
    try:
        return kind(**arguments)
    except (TypeError, ValueError) as exc:
        path = _culprit(kind, arguments, config)
        raise ConfigError(f"{kind.__name__} refused the settings: {exc}", path=path, source=source) from None


def _culprit(sft_config: Any, arguments: dict[str, Any], config: TrainConfig) -> str | None:
    """The key of ``config`` that made ``SFTConfig`` fail: the one without which it succeeds."""
    for key in config.extra:
        try:
            sft_config(**{k: v for k, v in arguments.items() if k != key})
        except (TypeError, ValueError):
            continue
        return f"extra.{key}"
    if config.bf16:
        return "bf16"
    return None


def _peft_config(lora: LoraSettings) -> Any:
    peft = _import("peft")
    modules = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=modules,
        task_type="CAUSAL_LM",
    )


def _load_tokenizer(model: str) -> Any:
    transformers = _import("transformers")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of {model!r}: {exc}", path="model") from None
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(f"the tokenizer of {model!r} has no chat template", path="model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _base_dtype(model: str) -> Any:
    """The dtype the base model's weights are stored in (the checkpoint keeps it)."""
    torch = _import("torch")
    transformers = _import("transformers")
    try:
        dtype = getattr(transformers.AutoConfig.from_pretrained(model), "dtype", None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the config of {model!r}: {exc}", path="model") from None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _check_output_dir(path: Path) -> None:
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / MARKER).is_file())):
        raise ConfigError(
            f"{str(path)!r} exists and is not an empty folder or an earlier checkpoint of aftlib train; "
            "choose another folder",
            path="output_dir",
        )


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """No progress bars from datasets and transformers while training; restored afterwards."""
    datasets_logging = _import("datasets.utils.logging")
    transformers_logging = _import("transformers.utils.logging")
    datasets_on = datasets_logging.is_progress_bar_enabled()
    transformers_on = transformers_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets_logging.enable_progress_bar()
        if transformers_on:
            transformers_logging.enable_progress_bar()


@define
class _Prepared:
    """TRL's trainer, ready to train, and what went into it."""

    trainer: Any
    tokenizer: Any
    used: list[TrainingRecord]
    skipped: list[str]
    losses: list[LossPoint]


def _sft_rows(
    config: TrainConfig, tokenizer: Any
) -> tuple[list[dict[str, Any]], list[TrainingRecord], list[str]]:
    """The encoded SFT examples (loss on the answer turn), the records used and where the skipped are."""
    used: list[TrainingRecord] = []
    skipped: list[str] = []
    rows: list[dict[str, Any]] = []
    for record in _read_records(config.data):
        input_ids, labels = _encode(tokenizer, record.messages)
        if len(input_ids) > config.max_length:
            skipped.append(record.where)
            continue
        used.append(record)
        rows.append({"input_ids": input_ids, "labels": labels})
    return rows, used, skipped


def _grpo_rows(
    config: TrainConfig, tokenizer: Any, records: list[RlRecord], no_drafts: list[str]
) -> tuple[list[dict[str, Any]], list[TrainingRecord], list[str]]:
    """The GRPO prompts (built as served), the records used (kind easy or hard) and where the skipped are."""
    rows: list[dict[str, Any]] = []
    used: list[TrainingRecord] = []
    skipped = list(no_drafts)
    for record, row in zip(records, grpo_rows(records, config.settings, config.seed), strict=True):
        if len(tokenizer.encode(prompt_text(tokenizer, row), add_special_tokens=False)) > config.max_length:
            skipped.append(record.where)
            continue
        rows.append(row)
        kind = {True: "easy", False: "hard", None: "unknown"}[record.majority_right]
        used.append(TrainingRecord(where=record.where, messages=(), kind=kind))
    return rows, used, skipped


def _build_trainer(
    config: TrainConfig,
    workdir: Path,
    *,
    on_log: Callable[[LossPoint], None] | None = None,
    source: str | None = None,
) -> _Prepared:
    """Read and encode the data and build TRL's trainer (SFT or GRPO) writing into ``workdir``."""
    grpo = config.method == "grpo"
    if grpo:
        rl_records, no_drafts = read_rl_records(config.data)  # before any model loads: no gold is an error
    args = _sft_config(config, workdir, source=source)
    trl = _import("trl")
    transformers = _import("transformers")
    datasets = _import("datasets")
    peft_config = _peft_config(config.lora) if config.lora is not None else None
    tokenizer = _load_tokenizer(config.model)
    if grpo:
        rows, used, skipped = _grpo_rows(config, tokenizer, rl_records, no_drafts)
        trainer_class, extra = trl.GRPOTrainer, {"reward_funcs": reward_functions(config.settings)[0]}
    else:
        rows, used, skipped = _sft_rows(config, tokenizer)
        trainer_class, extra = trl.SFTTrainer, {}
    if not rows:
        what = "every prompt" if grpo else "every record"
        raise InputError(
            f"{what} is longer than max_length ({config.max_length} tokens)", where=", ".join(config.data)
        )
    callback = _LossLog(transformers, on_log)
    try:
        trainer = trainer_class(
            model=config.model,
            args=args,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[callback.as_callback()],
            **extra,
        )
    except OSError as exc:
        raise ConfigError(f"cannot load the model {config.model!r}: {exc}", path="model") from None
    except ValueError as exc:
        raise ConfigError(f"TRL refused the settings: {exc}", source=source) from None
    trainer.remove_callback(transformers.PrinterCallback)
    return _Prepared(trainer, tokenizer, used, skipped, callback.points)


class _LossLog:
    """Collects the losses the trainer logs and hands each one to ``on_log``."""

    def __init__(self, transformers: Any, on_log: Callable[[LossPoint], None] | None) -> None:
        self.transformers = transformers
        self.on_log = on_log
        self.points: list[LossPoint] = []

    def as_callback(self) -> Any:
        outer = self

        class Callback(self.transformers.TrainerCallback):  # type: ignore[misc,name-defined]
            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                if logs and "loss" in logs:
                    point = LossPoint(
                        step=int(state.global_step),
                        max_steps=int(state.max_steps),
                        epoch=float(logs.get("epoch", state.epoch or 0.0)),
                        loss=float(logs["loss"]),
                        learning_rate=float(logs.get("learning_rate", 0.0)),
                        reward=float(logs["reward"]) if "reward" in logs else None,
                    )
                    outer.points.append(point)
                    if outer.on_log is not None:
                        outer.on_log(point)

        return Callback()


def _save(trainer: Any, tokenizer: Any, config: TrainConfig, target: Path) -> Checkpoint:
    model = trainer.model
    checkpoint: Checkpoint = "full" if config.lora is None else "merged" if config.merge else "adapter"
    if checkpoint == "adapter":
        model.save_pretrained(str(target))
    else:
        if checkpoint == "merged":
            model = model.merge_and_unload()
        dtype = _base_dtype(config.model)
        model = model.to(dtype)
        model.config.dtype = dtype
        model.config.use_cache = True
        model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return checkpoint


def train(
    config: TrainConfig,
    *,
    on_log: Callable[[LossPoint], None] | None = None,
    source: str | None = None,
) -> TrainResult:
    """Fine-tune ``config.model`` on aggregation data with TRL's SFT trainer and write the checkpoint.

    The loss covers the last assistant turn of each record only (see the module docstring). The
    checkpoint is built in a temporary folder beside ``config.output_dir`` and moved into place when
    complete, with the tokenizer (and chat template) of the base model and a file ``aftlib-train.json``
    recording the settings and losses. Full and merged checkpoints keep the dtype of the base model.

    Args:
        config: The settings.
        on_log: Called with each logged loss, as training goes.
        source: The config file, for error messages.

    Returns:
        Where the checkpoint is, what kind it is, and the losses.

    Raises:
        ConfigError: A setting is wrong (unknown ``extra`` argument, model not found, ...).
        InputError: The training data is missing or malformed (the error names the file and line).
        MissingExtraError: The ``train`` extra is not installed.
    """
    try:
        return _train(config, on_log, source)
    except ConfigError as exc:
        if exc.source is not None or source is None:
            raise
        raise ConfigError(exc.message, path=exc.path, source=source) from None


def _train(
    config: TrainConfig, on_log: Callable[[LossPoint], None] | None, source: str | None
) -> TrainResult:
    started = time.perf_counter()
    log = get_logger(__name__, model=config.model, output_dir=config.output_dir)
    target = Path(config.output_dir).expanduser().resolve()
    _check_output_dir(target)
    with staged_dir(target, replace=True) as staging:
        with _quiet_progress_bars():
            prepared = _build_trainer(config, staging, on_log=on_log, source=source)
            used, skipped = prepared.used, prepared.skipped
            kinds = dict(Counter(r.kind for r in used))
            for where in skipped:
                log.warning(
                    "record longer than max_length skipped", where=where, max_length=config.max_length
                )
            log.info("training", records=len(used), skipped=len(skipped), kinds=kinds)
            output = prepared.trainer.train()
            checkpoint = _save(prepared.trainer, prepared.tokenizer, config, staging)
        losses = tuple(prepared.losses)
        steps = int(prepared.trainer.state.global_step)
        summary = {
            "base_model": config.model,
            "method": config.method,
            "checkpoint": checkpoint,
            "steps": steps,
            "train_loss": float(output.training_loss),
            "losses": [attrs.asdict(p) for p in losses],
            "records": len(used),
            "kinds": kinds,
            "skipped": skipped,
            "config": attrs.asdict(config),
        }
        (staging / MARKER).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    elapsed = time.perf_counter() - started
    result = TrainResult(
        output_dir=target,
        checkpoint=checkpoint,
        base_model=config.model,
        steps=steps,
        losses=losses,
        train_loss=float(output.training_loss),
        records=len(used),
        kinds=kinds,
        skipped=tuple(skipped),
        elapsed=elapsed,
    )
    log.info(
        "trained",
        checkpoint=checkpoint,
        steps=steps,
        first_loss=result.first_loss,
        last_loss=result.last_loss,
        elapsed=round(elapsed, 1),
    )
    return result
