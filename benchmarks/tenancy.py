"""One collection for every knowledge base, or one per knowledge base? Measured on Qdrant Edge.

    python benchmarks/tenancy.py [--points 30000] [--kbs 20] [--dim 384] [--out FILE]

Issue 16 asks whether physical separation (a collection per tenant, as the ETL post-mortem's
system did) is worth offering beside today's design: one collection, a `knowledge_base` payload
field with a keyword index, and every search filtered on it. Both layouts get the same points:
vectors drawn around shared topic centres (tenants write about overlapping things, so a filter
has to do real work), knowledge bases of skewed sizes (one large, a few medium, many small).

Per layout: the time to write every point and build the indexes, the size on disk, the time a
new process takes to open what one search needs, search latency p50/p95 (k=10, one knowledge
base per query, large and small ones apart) and recall@10 against an exact search of that
knowledge base's vectors. The shared layout is measured twice: the keyword index as is, and
marked `is_tenant` (Qdrant then stores each tenant's points together and builds a graph per
tenant during indexing).
"""

from __future__ import annotations

import argparse
import json
import os
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
CENTRES = 200
SEED = 5


def kb_sizes(points: int, kbs: int) -> dict[str, int]:
    """One knowledge base with 40% of the points, a fifth of the rest with 10% each... skewed as
    tenants are: most are small."""
    weights = np.array([40.0] + [10.0] * max(1, kbs // 5) + [1.0] * (kbs - 1 - max(1, kbs // 5)))[:kbs]
    sizes = np.floor(points * weights / weights.sum()).astype(int)
    sizes[0] += points - sizes.sum()
    return {f"kb{i:02d}": int(n) for i, n in enumerate(sizes)}


def corpus(points: int, kbs: int, dim: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    rng = np.random.default_rng(SEED)
    centres = rng.standard_normal((CENTRES, dim)).astype(np.float32)
    sizes = kb_sizes(points, kbs)
    labels = np.concatenate([np.full(n, i) for i, n in enumerate(sizes.values())])
    vecs = centres[rng.integers(0, CENTRES, points)] + 0.6 * rng.standard_normal((points, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs, labels, sizes


def point_id(i: int) -> str:
    return str(uuid.UUID(int=(SEED << 64) + i))


def queries(dim: int, kbs: list[str]) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(SEED + 1)
    centres = np.random.default_rng(SEED).standard_normal((CENTRES, dim)).astype(np.float32)
    out = []
    for i in range(QUERIES):
        q = centres[rng.integers(0, CENTRES)] + 0.6 * rng.standard_normal(dim).astype(np.float32)
        out.append((kbs[i % len(kbs)], q / np.linalg.norm(q)))
    return out


def _shard(path: Path, dim: int, *, tenant_index: bool | None):
    from qdrant_edge import (
        Distance, EdgeConfig, EdgeShard, EdgeVectorParams, KeywordIndexParams, PayloadSchemaType, UpdateOperation,
    )

    path.mkdir(parents=True, exist_ok=True)
    shard = EdgeShard.create(str(path), EdgeConfig(vectors={"": EdgeVectorParams(size=dim, distance=Distance.Cosine)}))
    if tenant_index is not None:
        schema = KeywordIndexParams(is_tenant=True) if tenant_index else PayloadSchemaType.Keyword
        shard.update(UpdateOperation.create_field_index("knowledge_base", schema))
    return shard


def phase_build(layout: str, root: Path, points: int, kbs: int, dim: int) -> dict:
    from qdrant_edge import Point, UpdateOperation

    vecs, labels, sizes = corpus(points, kbs, dim)
    names = list(sizes)
    t0 = time.perf_counter()
    if layout == "per_kb":
        shards = {kb: _shard(root / kb, dim, tenant_index=None) for kb in names}
    else:
        shared = _shard(root / "shared", dim, tenant_index=layout == "shared_tenant")
        shards = {kb: shared for kb in names}
    for start in range(0, points, BATCH):
        by_shard: dict[int, tuple] = {}
        for i in range(start, min(points, start + BATCH)):
            kb = names[labels[i]]
            by_shard.setdefault(id(shards[kb]), (shards[kb], []))[1].append(
                Point(point_id(i), vecs[i].tolist(), {"knowledge_base": kb, "text": f"chunk {i}"})
            )
        for shard, batch in by_shard.values():
            shard.update(UpdateOperation.upsert_points(batch))
    upserted = time.perf_counter() - t0
    for shard in {id(s): s for s in shards.values()}.values():
        shard.optimize()
        shard.flush()
        shard.close()
    built = time.perf_counter() - t0
    # Blocks allocated, not apparent sizes: a new shard's files are sparse, preallocated ~130 MB.
    disk = sum(f.stat().st_blocks * 512 for f in root.rglob("*") if f.is_file())
    return {"upsert_s": upserted, "build_s": built, "disk_mb": disk / 2**20}


def phase_use(layout: str, root: Path, points: int, kbs: int, dim: int) -> dict:
    from qdrant_edge import EdgeShard, FieldCondition, Filter, MatchValue, Query, QueryRequest

    vecs, labels, sizes = corpus(points, kbs, dim)
    names = list(sizes)
    large, small = names[0], names[-1]
    opened: dict[str, object] = {}

    def shard_for(kb: str):
        key = kb if layout == "per_kb" else "shared"
        if key not in opened:
            opened[key] = EdgeShard.load(str(root / key))
        return opened[key]

    t0 = time.perf_counter()
    shard_for(large)
    open_s = time.perf_counter() - t0
    lat: dict[str, list[float]] = {"large": [], "small": []}
    recall: dict[str, list[float]] = {"large": [], "small": []}
    for kb in (large, small):
        shard_for(kb)  # opened before timing: a server or a long-lived process keeps it open
    for kb_name, q in queries(dim, [large, small]):
        which = "large" if kb_name == large else "small"
        flt = None if layout == "per_kb" else Filter(must=[FieldCondition(key="knowledge_base", match=MatchValue(value=kb_name))])
        t = time.perf_counter()
        hits = shard_for(kb_name).query(QueryRequest(query=Query.Nearest(q.tolist(), using=""), filter=flt, limit=10))
        lat[which].append(time.perf_counter() - t)
        mine = np.flatnonzero(labels == names.index(kb_name))
        exact = {point_id(int(i)) for i in mine[np.argsort(-(vecs[mine] @ q))[:10]]}
        recall[which].append(len(exact & {str(h.id) for h in hits}) / 10)
    for shard in opened.values():
        shard.close()
    out = {"open_s": open_s, "large_kb_points": sizes[large], "small_kb_points": sizes[small]}
    for which in ("large", "small"):
        ms = sorted(1000 * x for x in lat[which])
        out[f"{which}_p50_ms"] = statistics.median(ms)
        out[f"{which}_p95_ms"] = ms[int(0.95 * len(ms))]
        out[f"{which}_recall"] = statistics.mean(recall[which])
    return out


def in_process(phase: str, layout: str, root: Path, args: argparse.Namespace) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--layout", layout, "--root", str(root),
         "--points", str(args.points), "--kbs", str(args.kbs), "--dim", str(args.dim)],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"{layout} {phase} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


LAYOUTS = {
    "shared": "one collection, keyword index on knowledge_base",
    "shared_tenant": "one collection, the index marked is_tenant",
    "per_kb": "one collection per knowledge base",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=30_000)
    ap.add_argument("--kbs", type=int, default=20)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    ap.add_argument("--phase", choices=["build", "use"], help=argparse.SUPPRESS)
    ap.add_argument("--layout", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        fn = phase_build if args.phase == "build" else phase_use
        print(json.dumps(fn(args.layout, args.root, args.points, args.kbs, args.dim)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="rag-tenancy-"))
    results = {"points": args.points, "kbs": args.kbs, "dim": args.dim, "load": os.getloadavg()[0], "layouts": {}}
    try:
        for layout in args.layouts.split(","):
            root = tmp / layout
            build = in_process("build", layout, root, args)
            results["layouts"][layout] = {**build, **in_process("use", layout, root, args)}
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["load_after"] = os.getloadavg()[0]
    layouts = list(results["layouts"])
    first = results["layouts"][layouts[0]]
    print(f"{args.points:,} points x {args.dim} dims in {args.kbs} knowledge bases (largest {first['large_kb_points']:,}, "
          f"smallest {first['small_kb_points']:,}), load {results['load']:.1f} -> {results['load_after']:.1f}")
    rows = [
        ("write + index build (s)", "build_s", "{:.1f}"), ("on disk (MB)", "disk_mb", "{:.0f}"),
        ("open for one search (s)", "open_s", "{:.2f}"),
        ("large kb: p50 (ms)", "large_p50_ms", "{:.1f}"), ("large kb: p95 (ms)", "large_p95_ms", "{:.1f}"),
        ("large kb: recall@10", "large_recall", "{:.3f}"),
        ("small kb: p50 (ms)", "small_p50_ms", "{:.1f}"), ("small kb: p95 (ms)", "small_p95_ms", "{:.1f}"),
        ("small kb: recall@10", "small_recall", "{:.3f}"),
    ]
    print(f"{'':26}" + "".join(f"{name:>15}" for name in layouts))
    for label, key, fmt in rows:
        print(f"{label:26}" + "".join(f"{fmt.format(results['layouts'][n][key]):>15}" for n in layouts))
    for name in layouts:
        print(f"  {name}: {LAYOUTS[name]}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
