"""`rag-pipeline search` wall time, as a user at a terminal feels it: a fresh process that opens
the index, embeds the query and prints hits.

Fills a fresh data folder with synthetic chunks exactly as benchmarks/serve_latency.py does
(the offline `hash` embedder, keyword vectors, behind the alias), then runs the command
`--runs` times per mode and reports the median and the spread. Whichever `rag_pipeline` is on
PYTHONPATH is measured, so an older checkout can be timed by the same script:

    .venv/bin/python benchmarks/cli_search_latency.py --chunks 5000
    PYTHONPATH=/path/to/old/checkout .venv/bin/python benchmarks/cli_search_latency.py --chunks 5000
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import _fill  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5, help="per mode")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rag-cli-search-") as tmp:
        env = {**os.environ, "RAG_DATA_DIR": tmp, "RAG_EMBEDDER": "hash"}
        for name in ("DATABASE_URL", "QDRANT_PATH", "QDRANT_URL", "RAG_EMBEDDING_MODEL", "RAG_EMBEDDING_DIMENSIONS"):
            env.pop(name, None)
        fill_seconds, _ = _fill(env, args.chunks)
        figures = {}
        for mode in ("hybrid", "dense", "keyword"):
            walls = []
            for run in range(args.runs + 1):
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-m", "rag_pipeline.cli", "search", f"w{run * 7} w{run * 13} ERR-{run * 31}",
                                      "--mode", mode, "-k", "5", "--json"], env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if out.returncode != 0:
                    raise SystemExit(out.stderr[-2000:])
                if not json.loads(out.stdout):  # a list of hits; none means the index was not read
                    raise SystemExit(f"no hits for mode {mode}")
                if run:  # the first one also starts the data folder's PostgreSQL
                    walls.append(wall)
            figures[mode] = {"median_s": round(statistics.median(walls), 2), "min_s": round(min(walls), 2),
                             "max_s": round(max(walls), 2)}
        subprocess.run([sys.executable, "-m", "rag_pipeline.cli", "stop"], env=env, capture_output=True)
    result = {"chunks": args.chunks, "fill_seconds": round(fill_seconds, 1), "runs_per_mode": args.runs,
              "load": round(os.getloadavg()[0], 1), "modes": figures}
    print(f"{args.chunks} chunks; `rag-pipeline search` wall time over {args.runs} runs per mode (load {result['load']})")
    for mode, f in figures.items():
        print(f"  {mode:<8} median {f['median_s']:.2f} s   min {f['min_s']:.2f} s   max {f['max_s']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
