"""The benchmark runs end to end at a small size: every variant ingests, re-scans, re-indexes one
modified document and reports its figures. No figure is asserted (timings belong to the
benchmark, not to tests); what is asserted is that each variant did the work it reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rag_pipeline_tests.conftest import BASE_PG

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ingest.py"), "--docs", "40", "--sensor-files", "600",
         "--landings", "folder,bucket", "--latency-samples", "2", "--pg", BASE_PG, "--json", str(out)],
        capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures["variants"]) == {
        "bare", "default", "run", "pipeline", "langchain", "bare@bucket", "run@bucket", "pipeline@bucket"}
    for name, result in figures["variants"].items():
        assert result["cold_embedding_calls"] > 0, name
        assert result["peak_rss_mb"] > 0, name
        # The default runs on its own embedded server, measured apart from the benchmark's.
        if name == "default":
            assert result["cpu_seconds_by_process"]["postgres (embedded)"] > 0
        else:
            assert result["peak_pg_connections"] > 0, name
    # The incremental ones re-embed nothing when nothing changed.
    for name in ("bare", "default", "run", "pipeline", "bare@bucket", "run@bucket", "pipeline@bucket"):
        assert figures["variants"][name]["unchanged_embedding_calls"] == 0, name
    # The bare script reports its CPU per stage of the cold pass.
    assert set(figures["variants"]["bare"]["cold_stage_cpu_seconds"]) == {"detect", "extract", "chunk", "embed and write"}
    # Through `rag-pipeline run`, cold, unchanged and modified passes each make one run at most.
    assert figures["variants"]["run"]["runs"] == figures["variants"]["default"]["runs"] == 1
    assert figures["variants"]["pipeline"]["runs"] >= 2 and figures["variants"]["pipeline"]["failed_runs"] == 0
    assert figures["variants"]["pipeline"]["cold_failed_ticks"] == 0 and figures["variants"]["pipeline"]["cold_ticks"] >= 1
    # Two modified documents timed one after the other; runs forked from the code server's forkserver.
    assert len(figures["variants"]["pipeline"]["modified_samples"]) == 2
    assert "pipeline, one modified document searchable, each of 2 in turn (s): " in proc.stdout
    assert "forkserver" in figures["variants"]["pipeline"]["peak_rss_by_process_mb"]
    # 20 scattered re-uploads are gathered into a run or two, not one run per neighbourhood.
    assert figures["variants"]["pipeline"]["storm_documents"] == 20 and figures["variants"]["pipeline"]["storm_runs"] <= 2
    assert figures["sensor"]["folder"]["files"] == figures["sensor"]["bucket"]["files"] == 600
    assert "run: cold ingest / LangChain's = " in proc.stdout and "default: cold ingest / LangChain's = " in proc.stdout
    assert "orchestration overhead" in proc.stdout and "sensor tick over 600 unchanged files" in proc.stdout
    assert "sensor tick over 600 unchanged objects" in proc.stdout
