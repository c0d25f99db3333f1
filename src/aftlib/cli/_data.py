"""``aftlib data``: build aggregation training data from the command line.

``aftlib data off-policy`` turns preference data into aggregation examples, ``aftlib data on-policy``
drafts the proposals with the model to be trained, and ``aftlib data from-trace`` distils the output of
``aftlib run --trace``. Each writes the dataset (JSONL of chat ``messages``), its data card
(``OUT.card.json``) and the skipped records (``OUT.skipped.jsonl``); the commands that generate keep
their drafts and targets in ``OUT.drafts.jsonl``, so a rerun resumes. ``aftlib data rl`` turns a traced
run and gold answers into records for training an aggregator by reinforcement (``aftlib train`` with
``method: grpo``), with their card. One process at a time writes an output (the second is refused,
exit 2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import click
from attrs import evolve

from .. import config
from .._agents import ModelAgent
from .._errors import ConfigError, InputError
from .._io import exclusive_lock
from .._templates import PromptTemplate
from .._topology import Topology
from .._types import SamplingParams
from ..engines._base import Engine
from ..finetune._build import (
    ICL_TEMPLATE,
    build_off_policy,
    build_on_policy,
    describe_target,
    drafting_settings,
)
from ..finetune._card import DataCard, card_path, load_tokenizer, skipped_path, write_dataset
from ..finetune._drafts import drafts_path
from ..finetune._examples import Example, Skip
from ..finetune._preference import read_preferences
from ..finetune._rl_data import RlCard, build_rl_data
from ..finetune._traces import examples_from_trace
from ._common import (
    check_output,
    configure_output,
    input_option,
    log_json_option,
    output_option,
    run_async,
    verbose_option,
    verbosity,
)

__all__ = ("data",)

F = TypeVar("F", bound=Callable[..., Any])

_ENGINE_FAILURES = ("drafting engine failed", "target engine failed")


@click.group(
    "data",
    short_help="Build aggregation fine-tuning data.",
    help="Build aggregation fine-tuning data: JSONL of chat messages plus a data card.",
)
def data() -> None:
    """``aftlib data``."""


def _common_options(func: F) -> F:
    options = [
        input_option(required=True, help="JSONL (or JSON array) input file."),
        output_option(required=True, help="The dataset to write (JSONL)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Fixes every random choice."),
        click.option(
            "--direct-ratio",
            type=float,
            default=0.0,
            metavar="R",
            help="Direct examples per aggregation example, in [0, 1] (default 0: none).",
        ),
        click.option("--template", default="aft_aggregate", show_default=True, help="Aggregation template."),
        click.option("--tokenizer", help="Model folder whose tokenizer measures lengths in the card."),
        log_json_option,
        verbose_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _generating_options(func: F) -> F:
    options = [
        click.option("--k", type=int, default=4, show_default=True, help="Proposals per example."),
        click.option(
            "--target",
            type=click.Choice(("best", "engine")),
            default="best",
            show_default=True,
            help="The best-rated response, or the answer of --target-config's final aggregator.",
        ),
        click.option(
            "--score-key",
            default="overall_score",
            show_default=True,
            help="UltraFeedback completion key that rates it.",
        ),
        click.option(
            "--concurrency", type=int, default=64, show_default=True, help="Records in flight at once."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


_TARGET_CONFIG_HELP = (
    "Topology or AFT config whose final aggregator writes the targets (with --target engine)."
)


@data.command(
    "off-policy",
    short_help="Proposals from the responses of preference data.",
    help="Aggregation examples from preference data (UltraFeedback or binarized layout): k of each "
    "record's responses are the proposals, the best-rated one (or a target engine's answer) is the target.",
)
@_common_options
@_generating_options
@click.option(
    "--target-config", "--config", "target_config", type=click.Path(path_type=Path), help=_TARGET_CONFIG_HELP
)
@click.pass_context
def off_policy(ctx: click.Context, /, log_json: bool, **params: Any) -> int:
    """``aftlib data off-policy``."""
    configure_output(verbosity(ctx), log_json)
    return _handle(_namespace("off-policy", params))


@data.command(
    "on-policy",
    short_help="Proposals drafted by the model to be trained.",
    help="Aggregation examples whose proposals are k drafts of a base model, sampled with an "
    "in-context-learning prompt; the target is the record's best-rated response or a target engine's "
    "answer. Draft with --config (the first agent of its first layer) or --model (a vLLM engine).",
)
@_common_options
@_generating_options
@click.option("--target-config", type=click.Path(path_type=Path), help=_TARGET_CONFIG_HELP)
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    help="Topology or AFT config: the first agent of its first layer drafts (engine, sampling, LoRA).",
)
@click.option("--model", type=click.Path(path_type=Path), help="Model folder to draft with on a vLLM engine.")
@click.option("--max-model-len", type=int, help="Context length of the --model engine.")
@click.option(
    "--icl-template",
    default=ICL_TEMPLATE,
    show_default=True,
    help="In-context-learning template of the drafts.",
)
@click.option("--temperature", type=float, help="Drafting temperature (default: the agent's, or 0.7).")
@click.option("--top-p", type=float, help="Drafting top_p (default: the agent's, or 0.95).")
@click.option("--max-tokens", type=int, help="Drafting max_tokens (default: the agent's, or 1024).")
@click.pass_context
def on_policy(ctx: click.Context, /, log_json: bool, **params: Any) -> int:
    """``aftlib data on-policy``."""
    if (params["config"] is None) == (params["model"] is None):
        raise click.UsageError(
            "one of the options --config or --model is required"
            if params["config"] is None
            else "--config and --model cannot be used together",
            ctx,
        )
    configure_output(verbosity(ctx), log_json)
    return _handle(_namespace("on-policy", params))


@data.command(
    "from-trace",
    short_help="Examples from the output of aftlib run --trace.",
    help="Aggregation examples from a traced run: each turn's last-layer drafts and final answer.",
)
@_common_options
@click.pass_context
def from_trace(ctx: click.Context, /, log_json: bool, **params: Any) -> int:
    """``aftlib data from-trace``."""
    configure_output(verbosity(ctx), log_json)
    return _handle(_namespace("from-trace", params))


@data.command(
    "rl",
    short_help="RL records (drafts, gold, majority verdict) from aftlib run --trace.",
    help="Records for training an aggregator by reinforcement (aftlib train, method: grpo): each problem's "
    "drafts from a traced run, its gold answer from --references, and whether the drafts' majority was "
    "right; --easy-share balances problems whose majority was right (easy) and wrong (hard).",
)
@input_option(required=True, help="The output of aftlib run --trace on the problems.")
@click.option(
    "--references",
    type=click.Path(path_type=Path),
    required=True,
    metavar="FILE",
    help="Gold answers: JSON lines with 'id' and 'answer' (GSM8K's worked answer, '#### N').",
)
@output_option(required=True, help="The RL records to write (JSONL).")
@click.option(
    "--easy-share",
    type=float,
    default=None,
    metavar="S",
    help="Share of easy records, in [0, 1] (AggLM: 0.5); default: every record.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Which surplus records are dropped.")
@log_json_option
@verbose_option
@click.pass_context
def rl(
    ctx: click.Context,
    /,
    input_path: Path,
    references: Path,
    output: Path,
    easy_share: float | None,
    seed: int,
    log_json: bool,
) -> int:
    """``aftlib data rl``."""
    configure_output(verbosity(ctx), log_json)
    for what, path in (("input", input_path), ("references", references)):
        if not path.is_file():
            raise InputError(f"the {what} is not a file", where=str(path))
    check_output(output)
    with exclusive_lock(output, what="output"):
        card = build_rl_data(input_path, references, output, easy_share=easy_share, seed=seed)
    click.echo(_rl_summary(card), err=True)
    if card.written == 0:
        click.echo("aftlib: no RL record was written", err=True)
        return 1
    return 0


def _rl_summary(card: RlCard) -> str:
    mix = "every record" if card.easy_share is None else f"easy share {card.easy_share:g}"
    lines = [
        f"RL records: {card.written} ({card.easy} easy, {card.hard} hard; {mix}) -> {card.output}",
        f"records: {card.read} read; before the mix {card.available['easy']} easy, "
        f"{card.available['hard']} hard; drafts per record {card.drafts[0]} to {card.drafts[1]}",
    ]
    lines += [f"  skipped, {reason}: {count}" for reason, count in card.skipped.items()]
    lines.append(f"data card: {card_path(card.output)}")
    return "\n".join(lines)


def _namespace(command: str, params: dict[str, Any]) -> SimpleNamespace:
    """The command's parameters as the attributes the builders below read."""
    params = dict(params)
    params["input"] = params.pop("input_path")
    return SimpleNamespace(data_command=command, **params)


def _handle(args: Any) -> int:
    """Run one ``aftlib data`` command; 0 ok, 1 engine failures or no example (errors: the caller)."""
    _check_paths(args)
    generates = args.data_command == "on-policy" or getattr(args, "target", "best") == "engine"
    hint = f"rerun to resume from {drafts_path(args.output)}" if generates else "nothing was written"
    with exclusive_lock(args.output, what="output"):  # one process per dataset, before engines start

        async def build() -> DataCard:
            return await _build(args)

        card = run_async(build, hint=hint)
    click.echo(_summary(card), err=True)
    if card.total_examples == 0:
        click.echo("aftlib: no example was written", err=True)
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


def _check_paths(args: Any) -> None:
    if args.input.is_dir():
        raise InputError("the input is a directory, not a file", where=str(args.input))
    if not args.input.is_file():
        raise InputError("no such input file", where=str(args.input))
    if args.output.resolve() == args.input.resolve():
        raise ConfigError("the output file is the input file", path="--output")
    check_output(args.output)


def _target(args: Any, drafting: Topology | None = None) -> Topology | None:
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


def _drafter(args: Any) -> tuple[Engine, SamplingParams, str | None, Topology | None]:
    """The drafting engine, its sampling and LoRA adapter, and the topology they came from."""
    if args.config is not None:
        topology = config.load(args.config)
        agent = topology.layers[0].agents[0] if topology.layers else topology.final
        if not isinstance(agent, ModelAgent):
            raise ConfigError(
                f"the first agent of {args.config} ({agent.name!r}, a {type(agent).__name__}) asks no model; "
                "the drafts need a proposer",
                path="--config",
            )
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


async def _build(args: Any) -> DataCard:
    _check_paths(args)
    tokenizer = None if args.tokenizer is None else load_tokenizer(args.tokenizer)
    common: dict[str, Any] = {
        "command": f"data {args.data_command}",
        "seed": args.seed,
        "direct_ratio": args.direct_ratio,
        "template": args.template,
    }
    items: Iterator[Example | Skip] | AbstractAsyncContextManager[AsyncIterator[Example | Skip]]
    if args.data_command == "from-trace":
        items = examples_from_trace(
            args.input, seed=args.seed, direct_ratio=args.direct_ratio, template=args.template
        )
        return await write_dataset(args.output, items, sources=common, tokenizer=tokenizer)
    common.update(k=args.k, score_key=args.score_key)
    cache = drafts_path(args.output)
    if args.data_command == "off-policy":
        target = _target(args)
        records = read_preferences(args.input, score_key=args.score_key)
        sources = {**common, "target": describe_target(target)}
        if target is not None:
            sources["drafts_cache"] = str(cache)
        items = build_off_policy(
            records,
            k=args.k,
            seed=args.seed,
            target=target,
            direct_ratio=args.direct_ratio,
            template=args.template,
            concurrency=args.concurrency,
            cache=None if target is None else cache,
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
        "drafts_cache": str(cache),
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
        cache=cache,
    )
    return await write_dataset(args.output, items, sources=sources, tokenizer=tokenizer)
