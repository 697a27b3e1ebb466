"""README's first command on the embedded defaults: samples in, searchable results out."""

from __future__ import annotations

import pytest

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from rag_pipeline import embedded_pg
from rag_pipeline_tests.helpers import remove_socket_link

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S)][:3]


def test_readme_starts_with_the_two_commands():
    run_cmd, test_cmd, slow_cmd = readme_commands()
    assert run_cmd.endswith("rag-pipeline demo")
    # The second runs the fast tier (pytest.ini's default selection), the third the slow tier.
    assert "pytest" in test_cmd and "slow" not in test_cmd
    assert "-m slow" in slow_cmd and "pytest" in slow_cmd
    ini = (REPO / "pytest.ini").read_text()
    assert '-m "not slow"' in ini and re.search(r"^\s+slow:", ini, re.M), "pytest.ini must default to the fast tier"
    ci = (REPO / ".ci" / "run").read_text()
    assert test_cmd in ci, "CI must run exactly README's test command"
    assert slow_cmd in ci, "CI must run exactly README's slow-tier command"
    assert ci.index(test_cmd) < ci.index(slow_cmd)


# Slow tier: README's first command in a process of its own, on the embedded defaults.
@pytest.mark.slow
def test_demo_on_embedded_defaults(tmp_path):
    run_cmd, *_ = readme_commands()
    # The bootstrap part (venv + pip install) is what CI itself just did; run the pipeline part.
    verb = run_cmd.rsplit("rag-pipeline", 1)[1].split()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "DATABASE_URL", "QDRANT_", "OPENAI_", "DAGSTER_"))}
    data = tmp_path / ".rag_data"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rag_pipeline.cli", *verb, "--json"], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=600,
        )
        # The default database is a PostgreSQL server in the data folder, left running for the
        # next verb; `rag-pipeline stop` stops it.
        server = embedded_pg.running_pid(data_dir=data)
        stop = subprocess.run([sys.executable, "-m", "rag_pipeline.cli", "stop"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        embedded_pg.stop(data_dir=data)
        remove_socket_link(data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert server is not None and stop.stdout.startswith(f"stopped PostgreSQL for {data} (pid {server})"), stop
    assert embedded_pg.running_pid(data_dir=data) is None
    out = json.loads(proc.stdout)
    assert out["run"]["indexed"] == 4 and out["run"]["failed"] == 0
    top = {s["query"]: s["hits"][0]["path"] for s in out["searches"]}
    assert top["how many vacation days carry over to next year"] == "vacation-policy.md"
    assert top["how do I roll back a deployment"] == "deploy-runbook.html"
    assert top["search outage root cause"] == "incident-review.pdf"
    # Everything lives under one data folder: the PostgreSQL cluster holding our tables and
    # Dagster's storage, embedded Qdrant.
    assert (data / "postgres" / "data" / "PG_VERSION").is_file() and not (data / "rag.sqlite3").exists()
    assert (data / "vectors").is_dir() and "PooledPostgresEventLogStorage" in (data / "dagster" / "dagster.yaml").read_text()
