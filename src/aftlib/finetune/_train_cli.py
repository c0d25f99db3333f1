"""``aftlib train``: fine-tune an aggregator from a YAML config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import attrs

from .._errors import AftError, ConfigError, InputError
from ._train import LossPoint, TrainConfig, TrainResult, train

__all__ = ("add_parser",)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_parser(commands: Any) -> None:
    """Add the ``train`` command to the ``aftlib`` subcommands."""
    train_parser = commands.add_parser(
        "train",
        help="fine-tune a model on aggregation data",
        description="Fine-tune a model on aggregation data (the output of 'aftlib data') with TRL's SFT "
        "trainer; the loss is on the answer turn only. Needs the train extra.",
    )
    train_parser.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="the training config (YAML)"
    )
    train_parser.add_argument(
        "--output-dir", type=Path, metavar="DIR", help="the checkpoint folder (overrides output_dir)"
    )
    train_parser.add_argument(
        "--max-steps", type=_positive, metavar="N", help="optimizer steps in all (overrides max_steps)"
    )
    train_parser.set_defaults(handler=_train)


def _print_loss(point: LossPoint) -> None:
    print(
        f"step {point.step}/{point.max_steps}  epoch {point.epoch:.2f}  loss {point.loss:.4f}  "
        f"lr {point.learning_rate:.3g}",
        file=sys.stderr,
        flush=True,
    )


def _summary(result: TrainResult) -> str:
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(result.kinds.items()))
    lines = [f"trained {result.steps} steps on {result.records} records ({kinds}) in {result.elapsed:,.1f}s"]
    if result.skipped:
        lines.append(
            f"skipped {len(result.skipped)} records longer than max_length: {', '.join(result.skipped[:5])}"
            + (" ..." if len(result.skipped) > 5 else "")
        )
    if result.losses:
        first, last = result.losses[0], result.losses[-1]
        lines.append(f"loss: {first.loss:.4f} (step {first.step}) -> {last.loss:.4f} (step {last.step})")
    lines.append(f"mean training loss: {result.train_loss:.4f}")
    out = str(result.output_dir)
    if result.checkpoint == "adapter":
        lines += [
            f"checkpoint: {out} (a LoRA adapter for {result.base_model})",
            f"serve it: VLLMEngine({result.base_model!r}, lora_adapters={{'aft': {out!r}}}) with agents "
            "that use lora='aft', or a topology config whose agents name 'lora: aft'",
        ]
    else:
        what = (
            "LoRA merged into the base weights" if result.checkpoint == "merged" else "every weight trained"
        )
        lines += [
            f"checkpoint: {out} ({what})",
            f"serve it: aftlib run --config aft.yaml with 'model_name: {out}' in aft.yaml, "
            f"or VLLMEngine({out!r}) in aftlib.presets.aft",
        ]
    return "\n".join(lines)


def _train(args: argparse.Namespace) -> int:
    source = str(args.config)
    try:
        config = TrainConfig.load(args.config)
        overrides: dict[str, Any] = {}
        if args.output_dir is not None:
            overrides["output_dir"] = str(args.output_dir)
        if args.max_steps is not None:
            overrides["max_steps"] = args.max_steps
        config = attrs.evolve(config, **overrides)
        result = train(config, on_log=_print_loss, source=source)
    except (ConfigError, InputError) as exc:
        print(f"aftlib: error: {exc}", file=sys.stderr)
        return 2
    except AftError as exc:
        print(f"aftlib: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aftlib: interrupted; no checkpoint was written", file=sys.stderr)
        return 130
    print(_summary(result), file=sys.stderr)
    return 0
