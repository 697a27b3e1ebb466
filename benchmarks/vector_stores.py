"""Embedded vector stores at scale: qdrant-client's local mode against Qdrant Edge
(`qdrant-edge-py`, the pipeline's embedded store since 2026-12-06), on the same points.

    python benchmarks/vector_stores.py --points 200000 [--dim 384] [--out FILE]

For each store: the time to write every point (batches of 1,000, then whatever index build the
store does), and then, in a fresh process as a run or a search command would meet the folder:
the time to open it, that process's peak resident memory, search latency (p50/p95 over 200
queries, k=10, with a payload filter on half of them) and the latency of upserting 100 more
points. Each phase runs in a process of its own, so memory figures are per process.

Issue 18 asks for this comparison at 200,000+ points to choose the embedded store by numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

BATCH = 1_000
QUERIES = 200
DOCS_PER_POINT = 8  # points per document id (chunks of one file)
SEED = 11


def vectors(n: int, dim: int, offset: int = 0) -> np.ndarray:
    rng = np.random.default_rng(SEED + offset)
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def point_id(i: int) -> str:
    return str(uuid.UUID(int=(SEED << 64) + i))


def payload(i: int) -> dict:
    return {"document_id": f"doc{i // DOCS_PER_POINT}", "knowledge_base": f"kb{i % 4}", "text": f"chunk {i}"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- qdrant-client local mode, opened as the pipeline opens it -------------------------------

class ClientLocal:
    # The pipeline's float32 loader (core/qdrant_local.py) went with local mode on 2026-12-06:
    # this is qdrant-client's local mode as it ships, which the 2026-12-02 figures beat a little.
    name = "qdrant-client local"

    def __init__(self, path: Path) -> None:
        from qdrant_client import QdrantClient

        self.client = QdrantClient(path=str(path))

    def create(self, dim: int) -> None:
        from qdrant_client.http import models as qm

        self.client.create_collection("bench", vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE))

    def upsert(self, start: int, vecs: np.ndarray) -> None:
        from qdrant_client.http import models as qm

        self.client.upsert("bench", points=[
            qm.PointStruct(id=point_id(start + i), vector=v.tolist(), payload=payload(start + i)) for i, v in enumerate(vecs)
        ], wait=True)

    def finish(self) -> None:
        pass

    def search(self, query: np.ndarray, kb: str | None) -> list:
        from qdrant_client.http import models as qm

        flt = qm.Filter(must=[qm.FieldCondition(key="knowledge_base", match=qm.MatchValue(value=kb))]) if kb else None
        return self.client.query_points("bench", query=query.tolist(), limit=10, query_filter=flt).points

    def count(self) -> int:
        return self.client.count("bench").count

    def close(self) -> None:
        self.client.close()


# -- Qdrant Edge ------------------------------------------------------------------------------

class Edge:
    name = "Qdrant Edge (qdrant-edge-py)"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shard = None
        if (path / "edge_config.json").exists() or any(path.glob("*")):
            from qdrant_edge import EdgeShard

            self.shard = EdgeShard.load(str(path))

    def create(self, dim: int) -> None:
        from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams, PayloadSchemaType, UpdateOperation

        self.path.mkdir(parents=True, exist_ok=True)
        self.shard = EdgeShard.create(str(self.path), EdgeConfig(vectors={"": EdgeVectorParams(size=dim, distance=Distance.Cosine)}))
        self.shard.update(UpdateOperation.create_field_index("knowledge_base", PayloadSchemaType.Keyword))

    def upsert(self, start: int, vecs: np.ndarray) -> None:
        from qdrant_edge import Point, UpdateOperation

        self.shard.update(UpdateOperation.upsert_points([
            Point(point_id(start + i), v.tolist(), payload(start + i)) for i, v in enumerate(vecs)
        ]))

    def finish(self) -> None:
        # Segments merged and the HNSW graph built now, not by a first search.
        self.shard.optimize()
        self.shard.flush()

    def search(self, query: np.ndarray, kb: str | None) -> list:
        from qdrant_edge import FieldCondition, Filter, MatchValue, Query, QueryRequest

        flt = Filter(must=[FieldCondition(key="knowledge_base", match=MatchValue(value=kb))]) if kb else None
        return self.shard.query(QueryRequest(query=Query.Nearest(query.tolist(), using=""), filter=flt, limit=10, with_payload=True))

    def count(self) -> int:
        from qdrant_edge import CountRequest

        return self.shard.count(CountRequest(exact=True))

    def close(self) -> None:
        self.shard.flush()
        self.shard.close()


STORES = {"local": ClientLocal, "edge": Edge}


def phase_build(store: str, path: Path, points: int, dim: int) -> dict:
    s = STORES[store](path)
    t0 = time.perf_counter()
    s.create(dim)
    for start in range(0, points, BATCH):
        s.upsert(start, vectors(min(BATCH, points - start), dim, offset=start))
    upserted = time.perf_counter() - t0
    s.finish()
    built = time.perf_counter() - t0
    s.close()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"upsert_s": upserted, "build_s": built, "peak_rss_mb": peak_rss_mb(), "disk_mb": size / 2**20}


def phase_use(store: str, path: Path, points: int, dim: int) -> dict:
    base = peak_rss_mb()
    t0 = time.perf_counter()
    s = STORES[store](path)
    count = s.count()
    opened = time.perf_counter() - t0
    assert count == points, (store, count, points)
    queries = vectors(QUERIES, dim, offset=10**9)
    lat = []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        hits = s.search(q, f"kb{i % 4}" if i % 2 else None)
        lat.append(time.perf_counter() - t)
        assert len(hits) == 10
    t = time.perf_counter()
    s.upsert(points + 10**8, vectors(100, dim, offset=points + 10**8))
    upsert_100 = time.perf_counter() - t
    s.close()
    lat.sort()
    return {
        "open_s": opened, "search_p50_ms": 1000 * statistics.median(lat), "search_p95_ms": 1000 * lat[int(0.95 * len(lat))],
        "upsert_100_ms": 1000 * upsert_100, "peak_rss_mb": peak_rss_mb(), "rss_before_open_mb": base,
    }


def in_process(phase: str, store: str, path: Path, points: int, dim: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--store", store, "--path", str(path), "--points", str(points), "--dim", str(dim)],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"{store} {phase} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--stores", default="edge,local")
    ap.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    ap.add_argument("--phase", choices=["build", "use"], help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        fn = phase_build if args.phase == "build" else phase_use
        print(json.dumps(fn(args.store, args.path, args.points, args.dim)))
        return

    root = Path(tempfile.mkdtemp(prefix="rag-vs-bench-"))
    results = {"points": args.points, "dim": args.dim, "load": os.getloadavg()[0], "stores": {}}
    try:
        for store in args.stores.split(","):
            path = root / store
            build = in_process("build", store, path, args.points, args.dim)
            use = in_process("use", store, path, args.points, args.dim)
            results["stores"][store] = {"name": STORES[store].name, **{f"build_{k}": v for k, v in build.items()}, **use}
            shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["load_after"] = os.getloadavg()[0]
    print(f"{args.points:,} points x {args.dim} dims, load {results['load']:.1f} -> {results['load_after']:.1f}")
    rows = [
        ("write all points (s)", "build_upsert_s", "{:.1f}"), ("write + index build (s)", "build_build_s", "{:.1f}"),
        ("writer peak RSS (MB)", "build_peak_rss_mb", "{:.0f}"), ("on disk (MB)", "build_disk_mb", "{:.0f}"),
        ("open in a new process (s)", "open_s", "{:.2f}"), ("reader peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("search p50 (ms)", "search_p50_ms", "{:.1f}"), ("search p95 (ms)", "search_p95_ms", "{:.1f}"),
        ("upsert 100 points (ms)", "upsert_100_ms", "{:.0f}"),
    ]
    stores = list(results["stores"])
    print(f"{'':28}" + "".join(f"{s:>14}" for s in stores))
    for label, key, fmt in rows:
        print(f"{label:28}" + "".join(f"{fmt.format(results['stores'][s][key]):>14}" for s in stores))
    for s in stores:
        print(f"  {s}: {results['stores'][s]['name']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
