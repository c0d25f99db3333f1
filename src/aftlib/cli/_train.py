"""``aftlib train``: fine-tune an aggregator from a YAML config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import click

from ..finetune._train import LossPoint, TrainConfig, TrainResult, train
from ._common import configure_output, run_sync, verbose_option, verbosity

__all__ = ("train_command",)


@click.command(
    "train",
    short_help="Fine-tune a model on aggregation data.",
    help="Fine-tune a model on aggregation data (the output of 'aftlib data') with TRL's SFT trainer; "
    "the loss is on the answer turn only. Needs the train extra.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    metavar="FILE",
    help="The training config (YAML).",
)
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="The checkpoint folder (overrides output_dir).",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    metavar="N",
    help="Optimizer steps in all (overrides max_steps).",
)
@verbose_option
@click.pass_context
def train_command(
    ctx: click.Context, config_path: Path, output_dir: Path | None, max_steps: int | None
) -> int:
    """``aftlib train``."""
    configure_output(verbosity(ctx))
    config = TrainConfig.load(config_path)
    overrides: dict[str, Any] = {}
    if output_dir is not None:
        overrides["output_dir"] = str(output_dir)
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    config = attrs.evolve(config, **overrides)
    result = run_sync(
        lambda: train(config, on_log=_print_loss, source=str(config_path)),
        hint="no checkpoint was written",
    )
    click.echo(_summary(result), err=True)
    return 0


def _print_loss(point: LossPoint) -> None:
    click.echo(
        f"step {point.step}/{point.max_steps}  epoch {point.epoch:.2f}  loss {point.loss:.4f}  "
        f"lr {point.learning_rate:.3g}",
        err=True,
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
