"""A whole sweep on CPU: the AFT topology's n x num_aggregation on the tiny model, judged by exact answers.

The model is the tiny random-weight Llama of ``aftlib.testing`` (built on first use), so **its numbers
are meaningless**: random weights answer no GSM8K problem, every accuracy is 0 and the plot shows only
how many tokens each cell spends. What is real: six cells run on one started vLLM engine, the drafts two
cells share are generated once (the summary's generated and reused tokens), every cell is judged, and
``results.csv``, ``results.md`` and the plots are written, as for a real sweep.

Run it with::

    python examples/sweep_tiny.py                 # writes into sweep_tiny/ in the current folder
    python examples/sweep_tiny.py --output /tmp/sweep --limit 3

The sweep file is ``examples/sweeps/sweep_tiny.yaml``; this script writes its base config (the tiny
model, short answers) and five GSM8K problems next to a copy of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import anyio
import yaml

from aftlib.evaluate import Sweep, markdown_table
from aftlib.testing import tiny_model_path

HERE = Path(__file__).resolve().parent
PROBLEMS = [
    ("Janet has 16 eggs. She eats 3 and bakes with 4. She sells the rest for $2 each. How many dollars?", 18),
    ("A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total?", 3),
    ("Tom reads 12 pages a day for 5 days. How many pages does he read?", 60),
    ("A box holds 6 apples. How many apples are in 7 boxes?", 42),
    ("Sara had 50 dollars and spent 18. How many dollars are left?", 32),
]
NOTE = (
    "note: the tiny model has random weights, so these numbers are meaningless (every answer is wrong);\n"
    "the sweep, the cache, the judge and the files are real. Run a real AFT model on a GPU for real numbers."
)


def prepare(folder: Path, limit: int) -> Path:
    """Write the sweep file, its base config and the GSM8K problems into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    base = {
        "model_name": str(tiny_model_path()),
        "generation_params": {
            "temperature": 0.7,
            "top_p": 0.95,
            "max_tokens": 24,
            "n": 1,
            "final_layer_temperature": 0.7,
            "final_layer_top_p": 1.0,
        },
        "num_aggregation": 1,
        "vllm_seed": 0,
        "engine_args": {"max_model_len": 2048, "kv_cache_memory_bytes": 1 << 30, "enforce_eager": True},
    }
    (folder / "tiny_aft.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    with (folder / "gsm8k_prompts.jsonl").open("w") as prompts, (folder / "gsm8k.jsonl").open("w") as gold:
        for i, (question, answer) in enumerate(PROBLEMS[:limit]):
            prompts.write(json.dumps({"id": i, "prompt": question}) + "\n")
            gold.write(
                json.dumps({"id": i, "question": question, "answer": f"So the answer is\n#### {answer}"})
                + "\n"
            )
    shutil.copy(HERE / "sweeps" / "sweep_tiny.yaml", folder / "sweep.yaml")
    return folder / "sweep.yaml"


async def main(output: Path, limit: int) -> None:
    """Prepare the files, run the sweep, print the table and where the files are."""
    sweep = Sweep.load(prepare(output, limit))
    report = await sweep.run(
        output / "results", on_cell=lambda cell, what: print(f"cell {cell.id}: {what}", flush=True)
    )
    print()
    print(markdown_table(report.results, list(sweep.config.axes)))
    print(
        f"tokens: {report.generated_tokens:,} generated, {report.reused_tokens:,} reused from the cache, "
        f"{report.engine_requests:,} engine requests"
    )
    for name, path in report.files.items():
        print(f"{name}: {path}")
    print(NOTE)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("sweep_tiny"), help="Where to write the sweep.")
    parser.add_argument("--limit", type=int, default=5, help="GSM8K problems (at most 5).")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    anyio.run(main, args.output, args.limit)
