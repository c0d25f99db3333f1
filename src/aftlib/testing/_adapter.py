"""A tiny random LoRA adapter for the tiny model, so LoRA serving can be tested without a download."""

from __future__ import annotations

import os
import pathlib

from .._errors import MissingExtraError
from .._io import staged_dir

__all__ = ("build_tiny_adapter",)


def build_tiny_adapter(
    model: str | os.PathLike[str], path: str | os.PathLike[str], *, seed: int = 0, rank: int = 8
) -> pathlib.Path:
    """Write a LoRA adapter with random (non-zero) weights for the model folder ``model`` into ``path``.

    The adapter targets the attention projections, so a model served with it samples differently from
    the base model. Built in a temporary sibling folder, then moved into place; an existing adapter is
    returned as is.

    Args:
        model: The base model folder (for example :func:`tiny_model_path`).
        path: The adapter folder to write.
        seed: The seed for the adapter weights.
        rank: The LoRA rank.

    Returns:
        The absolute path of the adapter folder.

    Raises:
        MissingExtraError: peft, torch or transformers is missing (an ``ImportError`` too).
    """
    target = pathlib.Path(path).expanduser().resolve()
    if (target / "adapter_config.json").is_file():
        return target
    try:
        import peft
        import torch
        import transformers
    except ImportError as exc:
        raise MissingExtraError(
            "build_tiny_adapter (with torch from the cpu extra)", "train", exc.name
        ) from exc
    with staged_dir(target) as staging, torch.random.fork_rng():
        torch.manual_seed(seed)
        base = transformers.AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
        config = peft.LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False,  # random A and B: the adapter changes the output
            task_type="CAUSAL_LM",
        )
        peft.get_peft_model(base, config).save_pretrained(str(staging))
    return target
