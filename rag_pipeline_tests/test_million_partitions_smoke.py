"""benchmarks/million_partitions.py end to end at a small size: it writes what an ingest leaves
in Dagster's storage, Dagster reads it back as its own, and every measurement ran. No figure is
asserted (timings belong to the benchmark); what is asserted is the work each figure stands for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rag_pipeline_tests.conftest import BASE_PG

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_million_partitions_smoke(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "million_partitions.py"), "--sizes", "300,600", "--reps", "1",
         "--pg", BASE_PG, "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())["sizes"]
    assert list(figures) == ["300", "600"]
    for size, result in figures.items():
        # The last document's materialization and check execution were read back by Dagster.
        assert result["read_back"] == f"bench/part0000/doc{int(size) - 1:07d}.txt"
        # The UI counts every synthetic document materialized; uploads the ticks added are pending.
        stats = result["partition_stats"]
        assert stats["numMaterialized"] == int(size) and stats["numFailed"] == 0, stats
        assert stats["numPartitions"] > int(size)
        assert result["tables_mb"]["event_logs"] > 0 and result["dagster_mb"] > result["ours_mb"] > 0
        assert "backfill_error" not in result, result.get("backfill_error")
        for key in ("partition_keys_s", "tick_idle_s", "tick_one_upload_s", "run_create_100_s",
                    "documents_in_active_runs_s", "status_warm_s", "backfill_create_s", "peak_rss_mb"):
            assert result[key] > 0, key
    assert "UI status after a partition change" in proc.stdout
