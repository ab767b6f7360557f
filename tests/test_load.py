"""The load test in ``bench/load.py``, run in CI: a burst through the real bot, with a call
reading the channel aloud beside it, nothing lost.

Timing (the event loop's lag) is reported by the benchmark, not asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import run_load
from bench.models import build_models

pytestmark = pytest.mark.load

ENDINGS = {"ok", "refused_busy", "refused_quota"}


async def test_a_burst_of_1000_commands_from_50_members_loses_nothing(tmp_path: Path) -> None:
    report = await run_load(build_models(tmp_path), users=50, commands=1000)
    print(report.summary())
    assert report.unanswered == 0
    assert report.usage_rows == report.commands == 1000
    # Admitted work was deferred before the model ran; the rest was refused at once.
    assert report.deferred == report.admitted
    assert report.deferred + report.refused_at_once == report.commands
    assert set(report.statuses) <= ENDINGS, report.statuses
    assert all(counts.get("ok") for counts in report.by_task.values())
    assert len(report.by_task) == 7
    # The call beside it read its channel aloud all along, and played it.
    assert report.read_aloud > 0 and report.frames_played > 0
    # It was a burst: work queued up and ran in shared batches.
    assert all(max(sizes) > 1 for sizes in report.batch_sizes.values()), report.batch_sizes
