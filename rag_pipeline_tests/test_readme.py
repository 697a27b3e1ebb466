"""README's first command on the embedded defaults: samples in, searchable results out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_demo_on_embedded_defaults(tmp_path):
    run_cmd, *_ = readme_commands()
    # The bootstrap part (venv + pip install) is what CI itself just did; run the pipeline part.
    verb = run_cmd.rsplit("rag-pipeline", 1)[1].split()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "DATABASE_URL", "QDRANT_", "OPENAI_", "DAGSTER_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "rag_pipeline.cli", *verb, "--json"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["run"]["indexed"] == 4 and out["run"]["failed"] == 0
    top = {s["query"]: s["hits"][0]["path"] for s in out["searches"]}
    assert top["how many vacation days carry over to next year"] == "vacation-policy.md"
    assert top["how do I roll back a deployment"] == "deploy-runbook.html"
    assert top["search outage root cause"] == "incident-review.pdf"
    # Everything lives under one data folder: SQLite tables, Dagster storage, embedded Qdrant.
    data = tmp_path / ".rag_data"
    assert (data / "rag.sqlite3").is_file() and (data / "qdrant").is_dir() and (data / "dagster" / "dagster.yaml").is_file()
