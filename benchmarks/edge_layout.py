"""The embedded store's segment layout: appendable segments only (the layout before 2026-12-06's
compaction) against compacted ones (`core/qdrant_edge_store.py`, module doc), on the same points.

    python benchmarks/edge_layout.py --points 250000 [--out FILE]

For each layout, each phase in a process of its own, as the pipeline meets the folder:
- fill: every point through `VectorStore.upsert` (1,000 at a time; 384-d vectors, ~120-word
  texts with their BM25 keyword vectors), then the writer's close;
- search: open, 50 hybrid and 50 dense queries (k=10): open time, resident memory after opening
  and after searching, p50 latency;
- run: open, upsert one run's worth (7,500 points), close: what a writer pays at its close;
- search again, after that run.
Resident memory is VmRSS from /proc (file pages mapped and touched included), and peak RSS.
Dense answers are compared with the appendable layout's (top-10 overlap, equal scores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

DIM = 384
RUN_POINTS = 7_500
QUERIES = 50
WORDS = [f"w{i}" for i in range(5000)]


def _rss_mb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return 0


def _batch(first: int, m: int, seed: int):  # noqa: ANN202
    import numpy as np

    rnd = random.Random(seed * 1_000_003 + first)
    texts = [" ".join(rnd.choices(WORDS, k=120)) + f" ERR-{first + i}" for i in range(m)]
    ids = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in texts]
    vecs = np.random.default_rng(seed * 1_000_003 + first).standard_normal((m, DIM)).astype("float32")
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    payloads = [{"knowledge_base": "b", "document_id": ids[i], "version": "v", "chunker": "c", "chunk_index": 0,
                 "text": t, "source_path": f"d{first + i}.txt", "file_type": "txt", "folders": []}
                for i, t in enumerate(texts)]
    return ids, vecs.tolist(), payloads


def _appendable_only() -> None:
    """The layout before compaction: every segment appendable, vectors in RAM, no int8 copy."""
    import qdrant_edge as qe

    from rag_pipeline.core import qdrant_edge_store as edge

    def earlier(dense, sparse, *, hnsw):  # noqa: ANN001, ANN202
        return qe.EdgeConfig(
            vectors={n: qe.EdgeVectorParams(size=s, distance=qe.Distance.Cosine) for n, (s, _) in dense.items()},
            sparse_vectors={n: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf) for n in sparse},
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=edge.NO_AUTO_INDEX_KB),
        )

    edge.layout = earlier
    edge.EdgeClient._edge_config = lambda self, name, hnsw=None: None  # load as stored


def phase(layout: str, name: str, path: Path, points: int) -> dict:
    import numpy as np

    if layout == "appendable":
        _appendable_only()
    from rag_pipeline.core import sparse
    from rag_pipeline.core.vectorstore import VectorStore, open_embedded

    started = time.perf_counter()
    client = open_embedded(path)
    store = VectorStore(client, "c", keyword=True)
    store.ensure_collection(DIM)
    out: dict = {"open_seconds": time.perf_counter() - started, "rss_open_mb": _rss_mb()}
    if name == "fill":
        for first in range(0, points, 1000):
            store.upsert(*_batch(first, min(1000, points - first), seed=1))
    elif name == "run":
        for first in range(points, points + RUN_POINTS, 1000):
            store.upsert(*_batch(first, 1000, seed=2))
    else:
        walls: dict[str, list[float]] = {"hybrid": [], "dense": []}
        answers = []
        for i in range(QUERIES):
            q = np.random.default_rng(10**6 + i).standard_normal(DIM).astype("float32")
            q /= np.linalg.norm(q)
            for mode in walls:
                t = time.perf_counter()
                hits = store.query(dense=q.tolist(), keyword=sparse.query_vector(f"w{i} w{i * 7} ERR-{i * 31}"), k=10,
                                   mode=mode, dense_floor=None)
                walls[mode].append(1000 * (time.perf_counter() - t))
                if mode == "dense":
                    answers.append([(h.document_id, round(h.score, 5)) for h in hits])
        out.update({f"{m}_p50_ms": statistics.median(w) for m, w in walls.items()})
        out["rss_searched_mb"] = _rss_mb()
        out["answers"] = answers
    out["work_seconds"] = time.perf_counter() - started - out["open_seconds"]
    t = time.perf_counter()
    client.close()
    out["close_seconds"] = time.perf_counter() - t
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    out["segments"] = len(os.listdir(path / "collections" / "c" / "segments"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=250_000)
    ap.add_argument("--layouts", default="appendable,compacted")
    ap.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--layout", help=argparse.SUPPRESS)
    ap.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.layout, args.phase, args.path, args.points)))
        return
    root = Path(tempfile.mkdtemp(prefix="edge-layout-"))
    results: dict[str, dict] = {}
    try:
        for layout in args.layouts.split(","):
            path = root / layout
            figures = results[layout] = {}
            for name in ("fill", "search", "run", "search_after_run"):
                proc = subprocess.run(
                    [sys.executable, __file__, "--phase", name.split("_")[0], "--layout", layout, "--path", str(path),
                     "--points", str(args.points)], capture_output=True, text=True, check=True,
                )
                figures[name] = json.loads(proc.stdout.strip().splitlines()[-1])
                shown = {k: round(v, 2) for k, v in figures[name].items() if isinstance(v, (int, float))}
                print(f"{layout:<10} {name:<16} {shown}", flush=True)
            figures["disk_mb"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) // 2**20
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if "appendable" in results:
        base = results["appendable"]["search"]["answers"]
        for layout, figures in results.items():
            got = figures["search"]["answers"]
            figures["dense_overlap"] = statistics.mean(
                len({d for d, _ in a} & {d for d, _ in b}) / max(1, len(a)) for a, b in zip(base, got))
            figures["dense_scores_equal"] = got == base
            print(f"{layout}: dense top-10 overlap with appendable {figures['dense_overlap']:.3f}, "
                  f"same answers and scores: {figures['dense_scores_equal']}; {figures['disk_mb']} MB on disk")
    for figures in results.values():
        for name in ("search", "search_after_run"):
            figures[name].pop("answers", None)
    if args.out:
        args.out.write_text(json.dumps({"points": args.points, "dim": DIM, "results": results}, indent=1))


if __name__ == "__main__":
    main()
