"""``aftlib data``: build aggregation training data from the command line.

``aftlib data off-policy`` turns preference data into aggregation examples, ``aftlib data on-policy``
drafts the proposals with the model to be trained, and ``aftlib data from-trace`` distils the output of
``aftlib run --trace``. Each writes the dataset (JSONL of chat ``messages``), its data card
(``OUT.card.json``) and the skipped records (``OUT.skipped.jsonl``); the commands that generate keep
their work in ``OUT.progress.jsonl``, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
from attrs import evolve

from .. import config
from .._errors import AftError, ConfigError, InputError
from .._templates import PromptTemplate
from .._topology import Topology
from .._types import SamplingParams
from ..engines._base import Engine
from ._build import ICL_TEMPLATE, build_off_policy, build_on_policy, describe_target, drafting_settings
from ._card import DataCard, card_path, load_tokenizer, skipped_path, write_dataset
from ._examples import Example, Skip
from ._preference import read_preferences
from ._traces import examples_from_trace

__all__ = ("add_parser", "progress_path")

_ENGINE_FAILURES = ("drafting engine failed", "target engine failed")


def progress_path(output: Path) -> Path:
    """Where the commands that generate keep their finished work: ``OUT.progress.jsonl``."""
    return output.with_name(output.name + ".progress.jsonl")


def add_parser(commands: Any) -> None:
    """Add the ``data`` command to the ``aftlib`` subcommands."""
    data = commands.add_parser(
        "data",
        help="build aggregation fine-tuning data",
        description="Build aggregation fine-tuning data: JSONL of chat messages plus a data card.",
    )
    kinds = data.add_subparsers(
        dest="data_command", required=True, metavar="{off-policy,on-policy,from-trace}"
    )
    off = kinds.add_parser(
        "off-policy",
        help="proposals from the responses of preference data",
        description="Aggregation examples from preference data (UltraFeedback or binarized layout): "
        "k of each record's responses are the proposals, the best-rated one (or a target engine's "
        "answer) is the target.",
    )
    on = kinds.add_parser(
        "on-policy",
        help="proposals drafted by the model to be trained",
        description="Aggregation examples whose proposals are k drafts of a base model, sampled with an "
        "in-context-learning prompt; the target is the record's best-rated response or a target "
        "engine's answer.",
    )
    trace = kinds.add_parser(
        "from-trace",
        help="examples from the output of aftlib run --trace",
        description="Aggregation examples from a traced run: each turn's last-layer drafts and final answer.",
    )
    for sub in (off, on, trace):
        sub.add_argument("--input", type=Path, required=True, help="JSONL (or JSON array) input file")
        sub.add_argument("--output", type=Path, required=True, help="the dataset to write (JSONL)")
        sub.add_argument("--seed", type=int, default=0, help="fixes every random choice (default 0)")
        sub.add_argument(
            "--direct-ratio",
            type=float,
            default=0.0,
            metavar="R",
            help="direct examples per aggregation example, in [0, 1] (default 0: none)",
        )
        sub.add_argument(
            "--template", default="aft_aggregate", help="aggregation template (default aft_aggregate)"
        )
        sub.add_argument("--tokenizer", help="model folder whose tokenizer measures lengths in the card")
        sub.add_argument("--log-json", action="store_true", help="log JSON lines to standard error")
        sub.set_defaults(handler=_handle)
    for sub in (off, on):
        sub.add_argument("--k", type=int, default=4, help="proposals per example (default 4)")
        sub.add_argument(
            "--target",
            choices=("best", "engine"),
            default="best",
            help="the best-rated response (default), or the answer of --target-config's final aggregator",
        )
        sub.add_argument(
            "--score-key",
            default="overall_score",
            help="UltraFeedback completion key that rates it (default overall_score)",
        )
        sub.add_argument("--concurrency", type=int, default=64, help="records in flight (default 64)")
    off.add_argument(
        "--target-config",
        "--config",
        dest="target_config",
        type=Path,
        help="topology or AFT config whose final aggregator writes the targets (with --target engine)",
    )
    on.add_argument(
        "--target-config",
        type=Path,
        help="topology or AFT config whose final aggregator writes the targets (with --target engine)",
    )
    drafter = on.add_mutually_exclusive_group(required=True)
    drafter.add_argument(
        "--config",
        type=Path,
        help="topology or AFT config: the first agent of its first layer drafts (engine, sampling, LoRA)",
    )
    drafter.add_argument("--model", type=Path, help="model folder to draft with on a vLLM engine")
    on.add_argument("--max-model-len", type=int, help="context length of the --model engine")
    on.add_argument(
        "--icl-template",
        default=ICL_TEMPLATE,
        help=f"in-context-learning template of the drafts (default {ICL_TEMPLATE})",
    )
    on.add_argument("--temperature", type=float, help="drafting temperature (default: the agent's, or 0.7)")
    on.add_argument("--top-p", type=float, help="drafting top_p (default: the agent's, or 0.95)")
    on.add_argument("--max-tokens", type=int, help="drafting max_tokens (default: the agent's, or 1024)")


def _handle(args: argparse.Namespace) -> int:
    """Run one ``aftlib data`` command; 0 ok, 1 engine failures or no example, 2 bad usage or input."""
    try:
        card = anyio.run(_build, args, backend="asyncio")
    except (ConfigError, InputError) as exc:
        print(f"aftlib data: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"aftlib data: error: {exc}", file=sys.stderr)
        return 2
    except AftError as exc:
        print(f"aftlib data: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"aftlib data: interrupted; rerun to resume from {progress_path(args.output)}", file=sys.stderr)
        return 130
    print(_summary(card), file=sys.stderr)
    if card.total_examples == 0:
        print("aftlib data: no example was written", file=sys.stderr)
        return 1
    return 1 if any(card.skipped.get(reason) for reason in _ENGINE_FAILURES) else 0


def _summary(card: DataCard) -> str:
    examples = ", ".join(f"{count} {kind}" for kind, count in card.examples.items())
    lines = [
        f"examples: {examples} -> {card.output}",
        f"records: {card.records_read} read, {card.records_used} used, {card.total_skipped} skipped",
    ]
    for reason, count in card.skipped.items():
        where = ", ".join(f"line {e['line']}" for e in card.skipped_examples.get(reason, []))
        more = ", ..." if count > len(card.skipped_examples.get(reason, [])) else ""
        lines.append(f"  {reason}: {count} ({where}{more})")
    if card.skipped:
        lines.append(f"skipped records: {skipped_path(card.output)}")
    lines.append(f"data card: {card_path(card.output)}")
    return "\n".join(lines)


def _check_paths(args: argparse.Namespace) -> None:
    if not args.input.is_file():
        raise InputError("no such input file", where=str(args.input))
    if args.output.resolve() == args.input.resolve():
        raise ConfigError("the output file is the input file", path="--output")


def _target(args: argparse.Namespace, drafting: Topology | None = None) -> Topology | None:
    if args.target == "best":
        if args.target_config is not None:
            raise ConfigError("--target-config is used only with --target engine", path="--target-config")
        return None
    if args.target_config is None:
        raise ConfigError("--target engine needs --target-config, the config of the target aggregator")
    drafts_config = getattr(args, "config", None)  # on-policy only
    same = drafts_config is not None and drafts_config.resolve() == args.target_config.resolve()
    if drafting is not None and same:
        return drafting  # one config for both: its engines start once
    return config.load(args.target_config)


def _drafter(args: argparse.Namespace) -> tuple[Engine, SamplingParams, str | None, Topology | None]:
    """The drafting engine, its sampling and LoRA adapter, and the topology they came from."""
    if args.config is not None:
        topology = config.load(args.config)
        agent = topology.layers[0].agents[0] if topology.layers else topology.final
        engine, sampling, lora = agent.engine, agent.sampling, agent.lora
    else:
        from ..engines import VLLMEngine

        extra: dict[str, Any] = {} if args.max_model_len is None else {"max_model_len": args.max_model_len}
        engine = VLLMEngine(str(args.model), name=args.model.name, **extra)
        sampling, lora, topology = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=1024), None, None
    overrides = {
        key: value
        for key, value in (
            ("temperature", args.temperature),
            ("top_p", args.top_p),
            ("max_tokens", args.max_tokens),
        )
        if value is not None
    }
    try:
        sampling = evolve(sampling, **overrides)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=f"--{(exc.path or '').replace('_', '-')}") from None
    return engine, sampling, lora, topology


async def _build(args: argparse.Namespace) -> DataCard:
    _check_paths(args)
    tokenizer = None if args.tokenizer is None else load_tokenizer(args.tokenizer)
    common: dict[str, Any] = {
        "command": f"data {args.data_command}",
        "seed": args.seed,
        "direct_ratio": args.direct_ratio,
        "template": args.template,
    }
    items: Iterator[Example | Skip] | AsyncIterator[Example | Skip]
    if args.data_command == "from-trace":
        items = examples_from_trace(
            args.input, seed=args.seed, direct_ratio=args.direct_ratio, template=args.template
        )
        return await write_dataset(args.output, items, sources=common, tokenizer=tokenizer)
    common.update(k=args.k, score_key=args.score_key)
    progress = progress_path(args.output)
    if args.data_command == "off-policy":
        target = _target(args)
        records = read_preferences(args.input, score_key=args.score_key)
        sources = {**common, "target": describe_target(target)}
        if target is not None:
            sources["progress"] = str(progress)
        items = build_off_policy(
            records,
            k=args.k,
            seed=args.seed,
            target=target,
            direct_ratio=args.direct_ratio,
            template=args.template,
            concurrency=args.concurrency,
            progress=None if target is None else progress,
        )
        return await write_dataset(args.output, items, sources=sources, tokenizer=tokenizer)
    engine, sampling, lora, drafting = _drafter(args)
    target = _target(args, drafting)
    icl = args.icl_template
    records = read_preferences(args.input, score_key=args.score_key, prompts=target is not None)
    sources = {
        **common,
        "target": describe_target(target),
        "drafts": drafting_settings(engine, sampling, PromptTemplate(icl), lora, args.k, args.seed),
        "progress": str(progress),
    }
    items = build_on_policy(
        engine,
        records,
        k=args.k,
        seed=args.seed,
        sampling=sampling,
        icl_template=icl,
        lora=lora,
        target=target,
        direct_ratio=args.direct_ratio,
        template=args.template,
        concurrency=args.concurrency,
        progress=progress,
    )
    return await write_dataset(args.output, items, sources=sources, tokenizer=tokenizer)
