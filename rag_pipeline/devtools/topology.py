"""The production processes on loopback, for tests and the benchmark: a gRPC code server
(`dagster api grpc`, as the user_code container runs it), `dagster-daemon` and optionally
`dagster-webserver`, all reaching the code server through a workspace file, on a DAGSTER_HOME
that holds the repository's own dagster.yaml (PostgreSQL storage)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, poll: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def production_home(home: Path, pg_url: str, dagster_yaml: Path = REPO / "dagster.yaml") -> dict[str, str]:
    """A DAGSTER_HOME with the shipped dagster.yaml; returns the environment it reads."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(dagster_yaml, home / "dagster.yaml")
    url = urlparse(pg_url)
    return {
        "DAGSTER_HOME": str(home), "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "", "DAGSTER_PG_HOST": url.hostname or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432), "DAGSTER_PG_DB": url.path.lstrip("/"),
    }


class Topology:
    """Start with `start_code_server()`, then `start_daemon()` / `start_webserver()`; `stop()`."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.tmp = workdir
        self.env = dict(os.environ if env is None else env)
        self.bin = Path(sys.executable).parent
        self.port = free_port()
        self.workspace = workdir / "workspace.yaml"
        self.workspace.write_text(
            f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {self.port}\n      location_name: rag_pipeline\n"
        )
        self.procs: list[subprocess.Popen] = []
        self.code_server: subprocess.Popen | None = None
        self.webserver_port: int | None = None

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen(args, cwd=self.tmp, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_code_server(self) -> None:
        self.code_server = self.spawn("code_server", [
            str(self.bin / "dagster"), "api", "grpc", "-h", "127.0.0.1", "-p", str(self.port),
            "-m", "rag_pipeline.definitions", "-a", "defs",
        ])
        wait_for(lambda: _answers(self.port), 90, "the code server")

    def restart_code_server(self) -> None:
        """What a redeploy does: the code server stops and comes back with `self.env`."""
        assert self.code_server is not None
        os.killpg(self.code_server.pid, signal.SIGTERM)
        self.code_server.wait(30)
        self.procs.remove(self.code_server)
        self.start_code_server()

    def start_daemon(self) -> None:
        self.spawn("daemon", [str(self.bin / "rag-dagster-daemon"), "run", "-w", str(self.workspace)])

    def start_webserver(self) -> int:
        self.webserver_port = free_port()
        self.spawn("webserver", [
            str(self.bin / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.webserver_port),
            "-w", str(self.workspace),
        ])
        wait_for(lambda: _answers(self.webserver_port), 120, "the webserver")
        return self.webserver_port

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def print_log_tails(self, chars: int = 4000) -> None:
        """For a failing test's output: the end of every process's log."""
        for path in sorted(self.tmp.glob("*.log")):
            print(f"--- {path.name} (tail) ---\n{path.read_text(errors='replace')[-chars:]}")

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
