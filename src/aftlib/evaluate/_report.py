"""A sweep's results: ``results.csv``, a Markdown table, plots of quality against cost, the Pareto front."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_write, write_text_atomic
from ._pareto import pareto_front, quality_points
from ._plots import plot_quality

if TYPE_CHECKING:
    from ._sweep import CellResult

__all__ = ("markdown_table", "pareto_front", "result_rows", "write_reports")


def _value(value: Any) -> Any:
    """An axis value for a CSV cell: scalars as they are, mappings and lists as JSON."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def front_ids(results: Sequence[CellResult], cost: str = "tokens_per_record") -> list[str]:
    """The ids of the cells on the Pareto front of quality against ``cost`` (a :class:`CellResult` field)."""
    keep, points = quality_points(results, cost)
    return [results[keep[i]].cell.id for i in pareto_front(points)]


def result_rows(results: Sequence[CellResult], axes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per cell, as written to ``results.csv``."""
    front = set(front_ids(results))
    rows = []
    for r in results:
        row: dict[str, Any] = {"cell": r.cell.id}
        for axis in axes:
            row[axis] = _value(r.cell.values.get(axis))
        row.update(
            metric=r.metric,
            value=r.value,
            standard_error=r.standard_error,
            n=r.n,
            records=r.records,
            tokens_per_record=r.tokens_per_record,
            completion_tokens_per_record=r.completion_tokens_per_record,
            cost_per_record=r.cost_per_record,
            generated_tokens=r.generated_tokens,
            reused_tokens=r.reused_tokens,
            saved_tokens_per_record=r.saved_tokens_per_record,
            pareto=r.cell.id in front,
            status=r.status,
            error=r.error or "",
        )
        rows.append(row)
    return rows


def _number(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(results: Sequence[CellResult], axes: Sequence[str]) -> str:
    """The results as a Markdown table: axis values, the metric with its standard error, the costs."""
    rows = result_rows(results, axes)
    metric = next((r["metric"] for r in rows if r["metric"]), "value")
    head = ["cell", *axes, f"{metric} ± se", "n", "tokens/record", "completion/record", "saved/record"]
    head += ["cost/record", "generated", "reused", "pareto", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        quality = _number(row["value"], 4)
        if quality and row["standard_error"] is not None:
            quality += f" ± {_number(row['standard_error'], 4)}"
        status = row["status"] + (f": {row['error']}" if row["error"] else "")
        cost = "" if row["cost_per_record"] is None else f"{row['cost_per_record']:.6g}"
        cells = [row["cell"], *(_number(row[a]) for a in axes), quality, _number(row["n"])]
        cells += [_number(row["tokens_per_record"], 1), _number(row["completion_tokens_per_record"], 1)]
        cells += [_number(row["saved_tokens_per_record"], 1), cost]
        cells += [
            _number(row["generated_tokens"]),
            _number(row["reused_tokens"]),
            "*" if row["pareto"] else "",
        ]
        cells.append(_number(status))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reports(
    results: Sequence[CellResult], axes: Sequence[str], output: Path
) -> tuple[dict[str, Path], list[str]]:
    """Write ``results.csv``, ``results.md`` and the plots into ``output``.

    Returns:
        The files written, by name, and the cells on the Pareto front of quality against tokens.
    """
    rows = result_rows(results, axes)
    files: dict[str, Path] = {}
    csv_path = output / "results.csv"
    with atomic_write(csv_path) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["cell"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    files["csv"] = csv_path
    md_path = output / "results.md"
    write_text_atomic(md_path, markdown_table(results, axes))
    files["markdown"] = md_path

    for cost, stem in (("tokens_per_record", "quality_vs_tokens"), ("cost_per_record", "quality_vs_cost")):
        written = plot_quality(results, cost, output / stem)
        for path in written:
            files[path.name] = path
    return files, front_ids(results)
