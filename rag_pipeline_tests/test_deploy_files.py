"""The deployment files parse: docker-compose.yml validates, workspace.yaml loads the code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_compose_file_validates():
    proc = subprocess.run(["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "OPENAI_API_KEY": ""})
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    assert {"postgres", "qdrant", "user_code", "webserver", "daemon"} <= set(config["services"])
    # Published ports bind to loopback only.
    for service in config["services"].values():
        for port in service.get("ports", []):
            assert str(port.get("host_ip", port) if isinstance(port, dict) else port).startswith("127.0.0.1")


def test_workspace_loads_definitions(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "DATABASE_URL", "QDRANT_", "DAGSTER_"))}
    env["RAG_DATA_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_code_server_loads_the_definitions_without_the_runs_libraries():
    """The code server evaluates the sensor and never embeds, writes vectors or builds frames:
    pandas, qdrant-client and openai are imported by the runs only (about 100 MB of RSS), and
    boto3 only where a bucket is read."""
    probe = (
        "import sys, rag_pipeline.definitions as d; d.defs.resolve_sensor_def('inbox_sensor'); "
        "print(sorted(m for m in ('pandas', 'qdrant_client', 'openai', 'numpy', 'boto3', 'botocore') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
