"""A private PostgreSQL cluster for tests that must restart it or starve it of connections."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rag_pipeline.devtools.topology import free_port


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


def private_cluster(max_connections: int, port: int | None = None):  # noqa: ANN201
    """A started cluster, stopped and removed afterwards. On a free port unless `port` is given:
    parallel workers, and other sessions on the machine, each get their own."""
    if _pg_bin() is None:
        pytest.skip("no PostgreSQL binaries to start a private cluster")
    if port is None:
        port = free_port()
    root = Path(f"/tmp/rag-test-pg-{os.getpid()}-{port}")
    shutil.rmtree(root, ignore_errors=True)
    try:
        cluster = PrivateCluster(root, port, max_connections).start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
