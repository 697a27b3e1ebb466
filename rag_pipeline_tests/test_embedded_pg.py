"""The default database: a PostgreSQL server in the data folder, started on demand, shared by
every process, surviving a crash, stopped by `rag-pipeline stop` (issue 19 item 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from rag_pipeline import embedded_pg
from rag_pipeline.cli import main
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import embedded_data_dir, remove_socket_link  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent
START = "from pathlib import Path; import sys; from rag_pipeline import embedded_pg; " \
        "print(embedded_pg.ensure_running(data_dir=Path(sys.argv[1]), announce=False))"


def connect(data_dir: Path) -> psycopg.Connection:
    return psycopg.connect(host=str(embedded_pg.socket_dir(data_dir)), dbname="rag", user="rag", autocommit=True)


def test_processes_at_once_start_one_server_and_share_it(embedded_data_dir: Path):
    data = embedded_data_dir
    procs = [
        subprocess.Popen([sys.executable, "-c", START, str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(err for _, err in outputs) + \
        (data / "postgres" / "server.log").read_text()
    pids = {int(out.strip()) for out, _ in outputs}
    assert len(pids) == 1 and pids == {embedded_pg.running_pid(data_dir=data)}
    log = (data / "postgres" / "server.log").read_text()
    assert log.count("database system is ready to accept connections") == 1, log
    with connect(data) as conn:
        # A unix socket in the data folder, no TCP listener, only its owner may connect.
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        assert conn.execute("SHOW unix_socket_permissions").fetchone() == ("0700",)
    assert (data / "postgres" / "rag-socket" / ".s.PGSQL.5432").is_socket()
    [pid] = pids
    # In a session of its own: a Ctrl-C or a group kill of whoever started it misses it.
    assert os.getsid(pid) == pid
    if os.geteuid() == 0:  # PostgreSQL refuses root: its system user runs it
        uid = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:")).split()[1])
        import pwd

        assert pwd.getpwuid(uid).pw_name == embedded_pg.SYSTEM_USER


def test_a_crashed_server_is_started_again_over_its_stale_pid_file(embedded_data_dir: Path):
    data = embedded_data_dir
    pid = embedded_pg.ensure_running(data_dir=data, announce=False)
    with connect(data) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    os.kill(pid, signal.SIGKILL)
    # After a reboot or a crash the recorded pid may be any live process: PostgreSQL alone
    # would refuse to start while it lives.
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.monotonic() + 30
        while embedded_pg.running_pid(data_dir=data) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        pid_file = data / "postgres" / "data" / "postmaster.pid"
        lines = pid_file.read_text().splitlines()
        pid_file.write_text("\n".join([str(stranger.pid), *lines[1:]]) + "\n")
        assert embedded_pg.running_pid(data_dir=data) is None
        new_pid = embedded_pg.ensure_running(data_dir=data, announce=False)
        assert new_pid not in (pid, stranger.pid) and stranger.poll() is None
        # The killed postmaster's children were gone before the new one started.
        assert set(embedded_pg._orphans(embedded_pg.layout(data))) >= {new_pid}
        with connect(data) as conn:
            assert conn.execute("SELECT n FROM kept").fetchall() == [(7,)]
    finally:
        stranger.kill()
        stranger.wait()


def test_a_long_data_folder_path_reaches_its_socket_through_a_short_link(tmp_path: Path):
    data = tmp_path / ("d" * 60) / ("e" * 60)
    data.mkdir(parents=True)
    try:
        url = Settings.from_env({"RAG_DATA_DIR": str(data)}).database_url
        link = embedded_pg.socket_dir(data)
        assert len(str(link / ".s.PGSQL.5432")) <= 107 and link.resolve() == data / "postgres" / "rag-socket"
        assert embedded_pg.data_dir_of(url) == data
        from rag_pipeline.core.db import open_engine

        import sqlalchemy as sa

        engine = open_engine(url)  # starts the server and migrates our tables
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM documents")).scalar_one() == 0
        engine.dispose()
        assert (data / "postgres" / "rag-socket" / ".s.PGSQL.5432").is_socket()  # the socket itself is in the folder
    finally:
        embedded_pg.stop(data_dir=data)
        remove_socket_link(data)
    assert embedded_pg.running_pid(data_dir=data) is None


def test_stop_verb_stops_the_server_and_the_next_verb_starts_it(embedded_data_dir: Path, monkeypatch, capfd):
    for name in ("DATABASE_URL", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAG_DATA_DIR", str(embedded_data_dir))
    assert main(["status", "--json"]) == 0
    out, err = capfd.readouterr()
    pid = embedded_pg.running_pid(data_dir=embedded_data_dir)
    assert json.loads(out)["totals"] == {} and f"started PostgreSQL for {embedded_data_dir} (pid {pid}" in err
    assert main(["stop"]) == 0
    assert capfd.readouterr().out.strip() == f"stopped PostgreSQL for {embedded_data_dir} (pid {pid})"
    assert embedded_pg.running_pid(data_dir=embedded_data_dir) is None
    assert main(["stop"]) == 0 and "was not running" in capfd.readouterr().out
    assert main(["status"]) == 0 and embedded_pg.running_pid(data_dir=embedded_data_dir) not in (None, pid)


def test_a_folder_left_on_sqlite_keeps_working_there_with_one_line(tmp_path: Path, monkeypatch, capfd):
    """An index built by a version whose default was SQLite: its tables and Dagster's history
    stay where they are, no server is started."""
    from rag_pipeline.core.db import dispose_engine, open_engine
    from rag_pipeline.instance import instance_yaml

    for name in ("DATABASE_URL", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path))
    old_url = f"sqlite:///{tmp_path / 'rag.sqlite3'}"
    open_engine(old_url)  # the older version's tables, at the current migrations
    dispose_engine(old_url)
    settings = Settings.from_env()
    assert settings.database_url == old_url and settings.legacy_sqlite and not settings.embedded_database
    assert "run_storage" not in instance_yaml(settings)  # Dagster's own SQLite storage, as before
    assert main(["status", "--json"]) == 0
    out, err = capfd.readouterr()
    assert err.splitlines() == [
        f"rag-pipeline: {tmp_path} was made by an older version and stays on SQLite (about 4x slower than the "
        "PostgreSQL default); to move, index into a new RAG_DATA_DIR"
    ]
    assert json.loads(out)["totals"] == {}
    assert not (tmp_path / "postgres").exists()
    assert main(["stop"]) == 0 and "it is on SQLite" in capfd.readouterr().out


def test_an_index_on_sqlite_says_before_it_outgrows_dagsters_sqlite_storage(tmp_path: Path, monkeypatch, capfd):
    """Past the threshold (lowered here from 25,000), `run` and `status` say in one line that
    SQLite storage fails near 36,000 partitions and what to do; below it, nothing is said."""
    from rag_pipeline.core import records
    from rag_pipeline.core.db import dispose_engine, open_engine

    for name in ("DATABASE_URL", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RAG_EMBEDDER", "hash")
    old_url = f"sqlite:///{tmp_path / 'rag.sqlite3'}"
    open_engine(old_url)
    dispose_engine(old_url)
    monkeypatch.setattr(records, "SQLITE_DOCUMENT_LIMIT", 3)
    inbox = Settings.from_env().inbox_dir / "kb"
    inbox.mkdir(parents=True)
    for i in range(2):
        (inbox / f"d{i}.txt").write_text(f"document number {i} about harbours")
    assert main(["run", "--json"]) == 0
    out, _ = capfd.readouterr()
    assert json.loads(out)["problems"] == []
    (inbox / "d2.txt").write_text("the third document, at the threshold")
    assert main(["run", "--json"]) == 0
    out, _ = capfd.readouterr()
    [problem] = json.loads(out)["problems"]
    assert problem.startswith("3 documents on SQLite") and "dagster #16260" in problem and "RAG_DATA_DIR" in problem
    assert main(["status"]) == 0
    assert f"rag-pipeline status: {problem}" in capfd.readouterr().err.splitlines()
    assert json.loads(out)["indexed"] == 3  # said, not refused: nothing waits on the warning


@pytest.mark.parametrize("url", [
    "postgresql://rag@db/rag", "sqlite:///x.db", "postgresql://rag@/rag?host=/var/run/postgresql",
    "postgresql://rag@/rag?host=/srv/postgres/rag-socket&host=/other", "postgresql://app@/rag?host=/srv/postgres/rag-socket",
    "postgresql://rag:pw@/rag?host=/srv/postgres/rag-socket", "postgresql://rag@/other?host=/srv/postgres/rag-socket",
    "postgresql://rag@/rag?host=/srv/postgres/run",
])
def test_only_a_data_folders_socket_counts_as_embedded(url: str):
    """Someone's server is never started (or initialized) as if it were the data folder's."""
    assert embedded_pg.data_dir_of(url) is None
    assert embedded_pg.data_dir_of("postgresql+psycopg://rag@/rag?host=/srv/postgres/rag-socket") == Path("/srv")


# Slow tier: both defaults through the CLI, as the benchmark runs them.
@pytest.mark.slow
def test_default_path_benchmark_smoke(tmp_path: Path):
    """benchmarks/default_path.py: both defaults index every document through the CLI, and the
    embedded server it started is stopped."""
    out = tmp_path / "figures.json"
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "default_path.py"), "--docs", "12", "--json", str(out),
             "--workdir", str(tmp_path)],
            capture_output=True, text=True, timeout=600,
        )
    finally:
        stopped = embedded_pg.stop(data_dir=tmp_path / "postgres" / ".rag_data")
        remove_socket_link(tmp_path / "postgres" / ".rag_data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert stopped is None  # the benchmark stopped its server itself
    results = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert {v: r["indexed"] for v, r in results.items()} == {"sqlite": 12, "postgres": 12}
    assert results["postgres"]["server_cpu_seconds"] > 0 and results["sqlite"]["server_cpu_seconds"] == 0
    assert (tmp_path / "postgres" / ".rag_data" / "postgres" / "data" / "PG_VERSION").is_file()
    assert not (tmp_path / "sqlite" / ".rag_data" / "postgres").exists()
    assert "new default / old default" in proc.stdout
