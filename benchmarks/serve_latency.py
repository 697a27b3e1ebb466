"""`rag-pipeline serve` latency: POST /search over HTTP, per mode, at a given number of chunks.

Fills a fresh data folder's index with synthetic chunks (prose made of a 5,000-word
vocabulary plus one identifier each, embedded by the offline `hash` embedder, keyword vectors
as the pipeline writes them) behind the alias, starts `rag-pipeline serve` as its own process
and times requests from this one (wall time per request, client side).

    .venv/bin/python benchmarks/serve_latency.py --chunks 5000
    QDRANT_URL=http://127.0.0.1:6333 .venv/bin/python benchmarks/serve_latency.py --chunks 100000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def _fill(env: dict[str, str], chunks: int, *, hnsw: bool = False) -> tuple[float, float | None]:
    from rag_pipeline.core import generations
    from rag_pipeline.core.embedding import make_embedder
    from rag_pipeline.core.vectorstore import VectorStore, open_client
    from rag_pipeline.settings import Settings

    from rag_pipeline.core.db import open_engine

    settings = Settings.from_env(env)
    open_engine(settings.database_url)  # our tables, as the pipeline leaves them
    spec = settings.embedding_spec
    client = open_client(settings.qdrant_url, settings.qdrant_path, settings.qdrant_api_key)
    collection = generations.collection_name(settings.collection, spec.fingerprint)
    store = VectorStore(client, collection, keyword=True)
    store.ensure_collection(spec.dimensions)
    embedder = make_embedder(spec.provider, spec.model, spec.dimensions)
    rnd = random.Random(7)
    words = [f"w{i}" for i in range(5000)]
    started = time.perf_counter()
    for first in range(0, chunks, 1000):
        texts = [" ".join(rnd.choices(words, k=120)) + f" ERR-{first + i}" for i in range(min(1000, chunks - first))]
        ids = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in texts]
        payloads = [
            {"knowledge_base": "bench", "document_id": ids[i], "version": "v1", "chunker": "c", "chunk_index": 0,
             "text": t, "source_path": f"doc{first + i}.txt", "file_type": "txt", "folders": []}
            for i, t in enumerate(texts)
        ]
        store.upsert(ids, embedder.embed(texts), payloads)
    from qdrant_client.http import models as qm

    client.update_collection_aliases(change_aliases_operations=[
        qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=collection, alias_name=settings.collection))
    ])
    filled = time.perf_counter() - started
    built = None
    if hnsw:  # what `rag-pipeline vectors optimize --hnsw` does (embedded store only)
        started = time.perf_counter()
        client.optimize(collection, hnsw=True)
        built = time.perf_counter() - started
    client.close()
    return filled, built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=100, help="per mode")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--hnsw", action="store_true",
                        help="build the embedded store's HNSW graph before serving (vectors optimize --hnsw)")
    args = parser.parse_args()
    import httpx

    with tempfile.TemporaryDirectory(prefix="rag-serve-") as tmp:
        env = {**os.environ, "RAG_DATA_DIR": tmp, "RAG_EMBEDDER": "hash", "RAG_SERVE_PORT": str(args.port)}
        for name in ("DATABASE_URL", "QDRANT_PATH", "RAG_EMBEDDING_MODEL", "RAG_EMBEDDING_DIMENSIONS", "RAG_SERVE_TOKEN"):
            env.pop(name, None)
        fill_seconds, hnsw_seconds = _fill(env, args.chunks, hnsw=args.hnsw)
        server = subprocess.Popen([sys.executable, "-m", "rag_pipeline.cli", "serve"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{args.port}"
        try:
            started = time.perf_counter()
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.perf_counter() - started > 300:
                    raise SystemExit(f"serve did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
            ready_seconds = time.perf_counter() - started
            rnd = random.Random(11)
            figures: dict[str, dict] = {}
            with httpx.Client(base_url=base, timeout=60) as http:
                for mode in ("hybrid", "dense", "keyword"):
                    walls = []
                    for _ in range(args.requests):
                        query = f"w{rnd.randrange(5000)} w{rnd.randrange(5000)} ERR-{rnd.randrange(args.chunks)}"
                        t0 = time.perf_counter()
                        response = http.post("/search", json={"query": query, "k": 10, "mode": mode})
                        walls.append(1000 * (time.perf_counter() - t0))
                        response.raise_for_status()
                    walls.sort()
                    figures[mode] = {"p50_ms": round(statistics.median(walls), 1),
                                     "p95_ms": round(walls[int(0.95 * (len(walls) - 1))], 1)}
        finally:
            server.terminate()
            server.wait(timeout=30)
            from rag_pipeline import embedded_pg

            embedded_pg.stop(data_dir=Path(tmp))  # the data folder's PostgreSQL, started by the fill
    qdrant = "server" if os.environ.get("QDRANT_URL") else "embedded"
    result = {"chunks": args.chunks, "qdrant": qdrant, "fill_seconds": round(fill_seconds, 1),
              "hnsw_build_seconds": round(hnsw_seconds, 1) if hnsw_seconds is not None else None,
              "serve_ready_seconds": round(ready_seconds, 2), "requests_per_mode": args.requests, "modes": figures}
    print(f"{args.chunks} chunks, {qdrant} Qdrant; filled in {result['fill_seconds']} s"
          + (f", HNSW built in {hnsw_seconds:.1f} s" if hnsw_seconds is not None else ", no HNSW graph")
          + f"; serve ready in {result['serve_ready_seconds']} s (load {os.getloadavg()[0]:.1f})")
    for mode, f in figures.items():
        print(f"  {mode:<8} p50 {f['p50_ms']:>7.1f} ms   p95 {f['p95_ms']:>7.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
