"""A private PostgreSQL cluster for tests that must restart it or starve it of connections."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class PrivateCluster:
    def __init__(self, root: Path, port: int, max_connections: int) -> None:
        self.bin = _pg_bin()
        self.dir = root
        self.port = port
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections={max_connections}"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> "PrivateCluster":
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-o", self.options, "-l", str(self.dir / "log"), "-w", "start")
        return self

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")


    def restart(self) -> None:
        """A fast shutdown (every session is terminated) and a start, as an operator's restart."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-o", self.options, "-l", str(self.dir / "log"),
                  "-m", "fast", "-w", "restart")


def worker_port(port: int) -> int:
    """`port` for this pytest-xdist worker: gw0 keeps it, gwN moves it up by 100 * N, so clusters
    of parallel workers never share one (the fast tier runs in parallel)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return port + 100 * int(worker.lstrip("gw") or 0)


def private_cluster(max_connections: int, port: int = 5491):  # noqa: ANN201
    if _pg_bin() is None:
        pytest.skip("no PostgreSQL binaries to start a private cluster")
    port = worker_port(port)
    root = Path(f"/tmp/rag-test-pg-{os.getpid()}-{port}")
    shutil.rmtree(root, ignore_errors=True)
    cluster = PrivateCluster(root, port, max_connections).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
