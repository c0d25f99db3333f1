"""A 5,000-record run through engines that fail at random: every record ends exactly once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from aftlib.testing import soak

pytestmark = pytest.mark.anyio


async def test_five_thousand_records_with_ten_percent_faults_end_exactly_once(tmp_path: Path) -> None:
    """With 10 % of requests failing (all five kinds), every record is written once, done or error.

    No task or request is left running, and memory does not grow with the records.
    """
    logger = logging.getLogger("aftlib")
    level = logger.level
    logger.setLevel(logging.ERROR)  # a log capture would keep every retry warning in memory
    try:
        report = await soak(tmp_path, records=5000, rate=0.1, seed=0)
    finally:
        logger.setLevel(level)
    assert (report.lost, report.duplicated) == (0, 0)
    assert report.done + report.failed == 5000
    assert set(report.faults) == {"raise", "hang", "mid_stream", "rate_limit", "server_error"}
    assert sum(report.faults.values()) > 0.08 * report.requests
    assert report.failed > 0  # faults did reach records: the run was tested, not lucky
    assert report.done > 0.9 * 5000  # retries and the quorum absorbed most of them
    assert report.failed_agents["error"] > 0
    assert (report.leaked_tasks, report.in_flight) == (0, 0)
    assert report.memory_growth_mb is not None
    assert report.peak_memory_mb is not None
    assert report.memory_growth_mb < 1.0
    assert report.peak_memory_mb < 32
