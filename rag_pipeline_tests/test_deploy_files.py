"""The deployment files parse: docker-compose.yml validates, workspace.yaml loads the code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def compose_config(*args: str, env: dict | None = None) -> dict:
    proc = subprocess.run(["docker-compose", "-f", str(REPO / "docker-compose.yml"), *args, "config"],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "OPENAI_API_KEY": "", **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


needs_compose = pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
LONG_RUNNING = {"postgres", "minio", "qdrant", "user_code", "webserver", "daemon"}


@needs_compose
def test_compose_file_validates():
    config = compose_config()
    assert LONG_RUNNING <= set(config["services"])
    # Published ports bind to loopback only.
    for service in config["services"].values():
        for port in service.get("ports", []):
            assert str(port.get("host_ip", port) if isinstance(port, dict) else port).startswith("127.0.0.1")


@needs_compose
def test_compose_services_are_checked_and_restarted():
    services = compose_config("--profile", "celery")["services"]
    for name in LONG_RUNNING | {"rabbitmq", "celery_worker"}:
        assert services[name].get("restart") == "unless-stopped", name
    for name in LONG_RUNNING | {"rabbitmq"}:
        assert services[name]["healthcheck"]["test"], name
    # What waits for what: the code server for its database and Qdrant, the UI and daemon for it.
    assert services["user_code"]["depends_on"]["qdrant"]["condition"] == "service_healthy"
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"]["user_code"]["condition"] == "service_healthy"
    assert services["user_code"]["healthcheck"]["test"][1:4] == ["dagster", "api", "grpc-health-check"]
    assert services["daemon"]["healthcheck"]["test"][1:] == ["dagster-daemon", "liveness-check"]


@needs_compose
def test_compose_has_an_upload_path_and_every_variable_in_env_example():
    example = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z_]+)=", example, re.M))
    used = set(re.findall(r"\$\{([A-Z_]+)", (REPO / "docker-compose.yml").read_text()))
    assert used <= documented, used - documented
    config = compose_config("--env-file", str(REPO / ".env.example"))
    # The folder landing zone is a folder of the host (files copied there are uploads); the
    # bucket is the default, created by minio_init.
    for name in ("user_code", "webserver", "daemon"):
        [mount] = [v for v in config["services"][name]["volumes"] if str(v).endswith("/data/inbox:rw")
                   or (isinstance(v, dict) and v.get("target") == "/data/inbox")]
        source = mount["source"] if isinstance(mount, dict) else mount.split(":")[0]
        assert source == str(REPO / "inbox"), mount
    env = config["services"]["user_code"]["environment"]
    assert env["RAG_INBOX_URL"] == "s3://uploads/landing" and env["RAG_INBOX_DIR"] == "/data/inbox"
    assert "mb --ignore-existing local/uploads" in " ".join(config["services"]["minio_init"]["command"])


def test_qdrant_server_and_client_are_pinned_to_the_same_minor_version():
    image = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["qdrant"]["image"]
    server = re.fullmatch(r"qdrant/qdrant:v(\d+)\.(\d+)\.\d+", image)
    assert server, image
    [pin] = re.findall(r'"qdrant-client>=(\d+)\.(\d+),<(\d+)\.(\d+)"', (REPO / "setup.py").read_text())
    assert pin[:2] == server.groups() and (int(pin[2]), int(pin[3])) == (int(pin[0]), int(pin[1]) + 1)
    from importlib.metadata import version

    assert version("qdrant-client").split(".")[:2] == list(server.groups())


# Slow tier: a process loading the code location as Dagster's tools do.
@pytest.mark.slow
def test_workspace_loads_definitions(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "DATABASE_URL", "QDRANT_", "DAGSTER_"))}
    env["RAG_DATA_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # Loading the code starts no database server (the default one starts at a first connection).
    from rag_pipeline import embedded_pg

    started = embedded_pg.stop(data_dir=tmp_path)  # should there be one, it leaves with the test
    assert started is None and not (tmp_path / "postgres").exists()


# Slow tier: a fresh interpreter importing the definitions.
@pytest.mark.slow
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
