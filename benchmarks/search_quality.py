"""Retrieval quality and search latency on the shipped labelled set.

Indexes the bundled samples (`rag_pipeline/samples`), the evaluation corpus
(`benchmarks/eval/corpus`, one folder per knowledge base) and the generated one
(`benchmarks/eval/generate.py`: 120 look-alike runbooks) together into a fresh data folder with
the chosen embedder, then runs `rag-pipeline eval` on the shipped set
(`benchmarks/eval/queries.jsonl`) and on the generated set (every mode), and times
`rag-pipeline search` as a process; each step is its own `rag-pipeline` process, as a user
runs them.

    .venv/bin/python benchmarks/search_quality.py                      # offline hash embedder
    .venv/bin/python benchmarks/search_quality.py --embedder local     # all-MiniLM-L6-v2 (torch)
    .venv/bin/python benchmarks/search_quality.py --json benchmarks/results/DATE-search-quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPORA = [REPO / "rag_pipeline" / "samples", REPO / "benchmarks" / "eval" / "corpus"]
QUERIES = REPO / "benchmarks" / "eval" / "queries.jsonl"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "rag_pipeline.cli", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"rag-pipeline {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", default="hash", choices=("hash", "local"))
    parser.add_argument("--queries", type=Path, default=QUERIES)
    parser.add_argument("--searches", type=int, default=3, help="timed `rag-pipeline search` processes")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rag-eval-") as tmp:
        generated = Path(tmp) / "generated"
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "eval" / "generate.py"), str(generated)], check=True)
        env = {**os.environ, "RAG_DATA_DIR": str(Path(tmp) / "data"), "RAG_EMBEDDER": args.embedder}
        for name in ("DATABASE_URL", "QDRANT_URL", "QDRANT_PATH", "RAG_INBOX_DIR", "RAG_INBOX_URL",
                     "RAG_EMBEDDING_MODEL", "RAG_EMBEDDING_DIMENSIONS", "RAG_SEARCH_MODE", "RAG_KEYWORD_VECTORS"):
            env.pop(name, None)
        for corpus in [*CORPORA, generated / "corpus"]:
            for kb in sorted(p for p in corpus.iterdir() if p.is_dir()):
                _cli(env, "ingest", str(kb), "--kb", kb.name)  # a folder keeps its layout below it
        started = time.perf_counter()
        run = json.loads(_cli(env, "run", "--json").stdout)
        index_seconds = time.perf_counter() - started
        report = json.loads(_cli(env, "eval", str(args.queries), "--json").stdout)
        larger = json.loads(_cli(env, "eval", str(generated / "queries.jsonl"), "--json").stdout)
        walls = []
        for _ in range(args.searches):
            started = time.perf_counter()
            _cli(env, "search", "ERR-4012 replica lease", "-k", "5")
            walls.append(time.perf_counter() - started)
    figures = {
        "embedder": args.embedder, "documents": run.get("indexed"), "index_seconds": round(index_seconds, 1),
        "cli_search_wall_seconds": {"median": round(statistics.median(walls), 2), "runs": [round(w, 2) for w in walls]},
        "shipped": report, "generated": larger,
    }
    from rag_pipeline.core.evaluation import render

    print(f"shipped set ({args.queries.name}):\n{render(report)}\n\ngenerated set (benchmarks/eval/generate.py):\n{render(larger)}")
    print(f"\n{figures['documents']} documents indexed in {figures['index_seconds']} s; "
          f"`rag-pipeline search` wall: median {figures['cli_search_wall_seconds']['median']} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
