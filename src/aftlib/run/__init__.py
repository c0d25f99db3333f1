"""Running a topology over a dataset: the runner, its resumable output (the journal) and its layouts.

Everything ``aftlib run``, ``aftlib eval`` and ``aftlib merge`` write goes through one
:class:`Journal`: finished items appended one JSON line each, an OS lock while a run holds the output,
a record of what made it (refusing an output made from something else), resume with torn-line repair,
the input's bad lines and the summary beside it. Each output layout is one :class:`Codec` that both
writes and reads it (``jsonl``, ``aft``, ``alpaca_eval``, ``mt_bench``).
"""

from __future__ import annotations

from .._accounting import AgentFailures, LayerUsage, UsageReport, Used
from .._util import publish as _publish
from ._answer import Answered, answer_record
from ._codecs import ANSWER_LAYOUTS, CODECS, FORMATS, Answer, Codec, codec, layout_of, write_format
from ._journal import (
    Journal,
    Refusal,
    errors_path,
    journal_path,
    record_key,
    run_journal,
    run_path,
    summary_path,
    write_bad_lines,
)
from ._runner import Runner, describe_topology
from ._shards import MergeSummary, Shard, merge_shards, shard_spec
from ._stats import Latency, Percentiles, RunStats, RunSummary, Throughput, loop_clock, percentiles

__all__ = (
    "ANSWER_LAYOUTS",
    "AgentFailures",
    "LayerUsage",
    "Latency",
    "Percentiles",
    "Throughput",
    "UsageReport",
    "Used",
    "CODECS",
    "FORMATS",
    "Answer",
    "Answered",
    "Codec",
    "Journal",
    "MergeSummary",
    "Refusal",
    "RunStats",
    "RunSummary",
    "Runner",
    "Shard",
    "answer_record",
    "codec",
    "describe_topology",
    "errors_path",
    "journal_path",
    "layout_of",
    "loop_clock",
    "merge_shards",
    "percentiles",
    "record_key",
    "run_journal",
    "run_path",
    "shard_spec",
    "summary_path",
    "write_bad_lines",
    "write_format",
)

_publish(globals(), __name__)
