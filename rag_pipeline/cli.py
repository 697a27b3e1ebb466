"""rag-pipeline: ingest, run, status, search, verify. Every verb takes --json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rag_pipeline.settings import Settings


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from rag_pipeline.core.sources import SourceError
    from rag_pipeline.settings import open_source

    try:
        # Into the folder (a hidden temp name, then a rename) or the bucket (multipart past
        # 8 MB): either way an upload appears only when complete.
        copied = open_source(settings).upload([Path(p) for p in args.paths], knowledge_base=args.kb)
    except (FileNotFoundError, ValueError, SourceError) as exc:
        print(f"rag-pipeline ingest: {exc}", file=sys.stderr)
        return 2
    payload = [{"document_id": d, "knowledge_base": kb, "path": p} for d, kb, p in copied]
    _emit(args, payload, "\n".join(f"{d}  {kb}/{p}" for d, kb, p in copied))
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from rag_pipeline.core.sources import SourceError
    from rag_pipeline.pipeline_runner import run_pending

    try:
        summary = run_pending(settings, progress=not args.json and sys.stderr.isatty())
    except SourceError as exc:
        # Unreachable after retries, wrong credentials, no such bucket: one line naming the
        # setting, no traceback; nothing was registered or tombstoned.
        print(f"rag-pipeline run: {exc}", file=sys.stderr)
        return 2
    text = (
        f"{summary['documents']} document(s) in {summary['runs']} run(s), {summary['seconds']:.2f}s: "
        f"{summary['indexed']} indexed, {summary['failed']} failed, {summary['pending']} pending"
    )
    for failure in summary["failures"]:
        text += f"\n  failed: {failure['knowledge_base']}/{failure['path']}: {failure['error']}"
    _emit(args, summary, text)
    return 0 if summary["failed"] == 0 and summary["pending"] == 0 and summary["run_failures"] == 0 else 1


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from rag_pipeline.core import records
    from rag_pipeline.core.db import open_engine

    rows = records.list_documents(open_engine(settings.database_url), args.kb)
    if args.failed:  # the dead letter: parked documents and why
        rows = [r for r in rows if r.status == records.FAILED]
    docs = [
        {
            "document_id": r.id, "knowledge_base": r.knowledge_base, "path": r.path, "status": r.status,
            "version": r.version, "indexed_version": r.indexed_version, "chunks": r.chunk_count,
            "error": r.error, "attempts": r.attempts, "updated_at": r.updated_at, "indexed_at": r.indexed_at,
        }
        for r in rows
    ]
    totals: dict[str, int] = {}
    for d in docs:
        totals[d["status"]] = totals.get(d["status"], 0) + 1
    lines = [
        f"{d['status']:<8} {d['knowledge_base']}/{d['path']}" + (f"  ({d['error']})" if d["error"] else "")
        for d in docs
    ]
    lines.append("totals: " + (", ".join(f"{k} {v}" for k, v in sorted(totals.items())) or "no documents"))
    _emit(args, {"documents": docs, "totals": totals}, "\n".join(lines))
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    """Re-drive parked documents: back to pending with a fresh attempt budget."""
    from rag_pipeline.core import records
    from rag_pipeline.core.db import open_engine

    engine = open_engine(settings.database_url)
    count = records.request_again(engine, args.documents or None, status=records.FAILED)
    _emit(
        args, {"requeued": count},
        f"{count} failed document(s) re-queued; the sensor or `rag-pipeline run` indexes them",
    )
    return 0


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    [payload] = search_many(settings, [(args.query, args.kb)], args.k)
    text = "\n\n".join(
        f"[{h['score']:.3f}] {h['knowledge_base']}/{h['path']} #{h['chunk_index']}\n  " + h["text"][:300].replace("\n", " ")
        for h in payload
    ) or "no results"
    _emit(args, payload, text)
    return 0


def search_many(settings: Settings, queries: list[tuple[str, str | None]], k: int) -> list[list[dict]]:
    """Top-k hits for each (query, knowledge base), with one embedder call and one Qdrant client."""
    from rag_pipeline.core import generations, records
    from rag_pipeline.core.db import open_engine
    from rag_pipeline.core.vectorstore import VectorStore, open_client
    from rag_pipeline.settings import make_settings_embedder

    client = open_client(settings.qdrant_url, settings.qdrant_path, settings.qdrant_api_key)
    try:
        # The collection the alias names, queried with the model it was built with: during a
        # re-embedding that is still the previous configuration.
        serving = generations.serving_collection(client, settings.collection)
        if serving is None:
            return [[] for _ in queries]
        engine = open_engine(settings.database_url)
        generation = generations.by_collection(engine, serving)
        # The configured spec when it is the one serving: the recorded one has the endpoint's
        # URL without credentials.
        other = generation is not None and generation.spec.fingerprint != settings.embedding_spec.fingerprint
        embedder = make_settings_embedder(settings, generation.spec if other else None)
        try:
            vectors = embedder.embed([q for q, _ in queries])
        finally:
            embedder.close()
        store = VectorStore(client, serving)
        # Tombstoned at the last tick, purged by a run soon after: out of search already.
        deleting = records.documents_in(engine, records.DELETING)
        results = [store.search(v, k=k, knowledge_base=kb, exclude_documents=deleting) for v, (_, kb) in zip(vectors, queries)]
    finally:
        client.close()
    return [
        [
            {"score": round(h.score, 4), "document_id": h.document_id, "knowledge_base": h.knowledge_base,
             "path": h.path, "chunk_index": h.chunk_index, "page": h.page, "heading": h.heading, "text": h.text}
            for h in hits
        ]
        for hits in results
    ]


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from rag_pipeline.core import generations
    from rag_pipeline.core.audit import audit_all, repair
    from rag_pipeline.core.db import open_engine
    from rag_pipeline.settings import open_vector_store

    engine = open_engine(settings.database_url)
    store = open_vector_store(settings, engine)
    embedding = settings.embedding_spec.fingerprint
    try:
        report = audit_all(engine, store, embedding)
        repaired = repair(engine, store, report) if args.repair and not report.ok else None
        # A repair also switches search if a re-embedding is complete, and drops collections
        # a switch retired but could not drop.
        switch = generations.promote_if_complete if args.repair else generations.status
        promotion = switch(engine, store.client, settings.collection, embedding)
    finally:
        store.close()
    payload = {
        "ok": report.ok, "documents_checked": report.documents_checked, "points_checked": report.points_checked,
        "documents_missing_points": report.missing_points,
        "orphan_points": sum(len(ids) for ids in report.orphan_points.values()),
        "problems": report.problems(), "repaired": repaired,
        "collection": store.collection, "search_reads": promotion.serving,
        "documents_left_to_reembed": promotion.waiting_for, "collections_dropped": promotion.dropped,
    }
    text = (
        f"{'OK' if report.ok else 'MISMATCH'}: {report.documents_checked} served document(s), "
        f"{report.points_checked} point(s); {len(report.missing_points)} document(s) missing points, "
        f"{payload['orphan_points']} orphan point(s)\nsearch reads {promotion.serving or 'nothing yet'}"
        + (f"; {promotion.waiting_for} document(s) left to re-embed into {store.collection}" if promotion.waiting_for else "")
    )
    if repaired:
        text += (
            f"\nrepaired: deleted {repaired['orphan_points_deleted']} orphan point(s), re-requested "
            f"{repaired['documents_requested']} document(s) (indexed by the sensor or `rag-pipeline run`)"
        )
    _emit(args, payload, text)
    # After a repair the corpus is consistent once the re-requested documents are indexed.
    return 0 if report.ok or repaired else 1


DEMO_QUERIES = [
    ("handbook", "how many vacation days carry over to next year"),
    ("engineering", "how do I roll back a deployment"),
    (None, "search outage root cause"),
]


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Ingest the bundled samples, index them, and search them: the embedded defaults end to end."""
    from rag_pipeline.pipeline_runner import run_pending
    from rag_pipeline.settings import open_source

    samples = Path(__file__).resolve().parent / "samples"
    source = open_source(settings)
    for kb_dir in sorted(p for p in samples.iterdir() if p.is_dir()):
        source.upload([kb_dir], knowledge_base=kb_dir.name)
    summary = run_pending(settings, progress=not args.json and sys.stderr.isatty())
    found = search_many(settings, [(q, kb) for kb, q in DEMO_QUERIES], k=2)
    results = [{"query": q, "knowledge_base": kb, "hits": hits} for (kb, q), hits in zip(DEMO_QUERIES, found)]
    if args.json:
        print(json.dumps({"run": summary, "searches": results}, indent=2, default=str))
    else:
        print(
            f"indexed {summary['indexed']} document(s) in {summary['seconds']:.1f}s "
            f"({summary['runs']} run(s)); data in {settings.data_dir}"
        )
        for r in results:
            print(f"\nsearch: {r['query']!r}" + (f" in {r['knowledge_base']}" if r["knowledge_base"] else ""))
            for h in r["hits"]:
                print(f"  [{h['score']:.3f}] {h['knowledge_base']}/{h['path']}: {h['text'][:110]!s}".replace("\n", " "))
        print(
            "\nNext: rag-pipeline search \"your question\"   |   UI: "
            f"DAGSTER_HOME={settings.data_dir / 'dagster'} dagster dev -w workspace.yaml  (http://127.0.0.1:3000)"
        )
    return 0 if summary["failed"] == 0 and summary["run_failures"] == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag-pipeline", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ingest", parents=[common], help="copy files or folders into the landing directory")
    p.add_argument("paths", nargs="+")
    p.add_argument("--kb", default="default", help="knowledge base (default: %(default)s)")
    p.set_defaults(fn=cmd_ingest)
    p = sub.add_parser("run", parents=[common], help="index everything pending now, no daemon needed")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("status", parents=[common], help="each document's state and totals")
    p.add_argument("--kb")
    p.add_argument("--failed", action="store_true", help="only parked documents, with their reasons (the dead letter)")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("retry", parents=[common], help="re-queue failed documents (all, or the ids given)")
    p.add_argument("documents", nargs="*", metavar="DOCUMENT_ID")
    p.set_defaults(fn=cmd_retry)
    p = sub.add_parser("search", parents=[common], help="top chunks for a query")
    p.add_argument("query")
    p.add_argument("--kb")
    p.add_argument("-k", type=int, default=5)
    p.set_defaults(fn=cmd_search)
    p = sub.add_parser("demo", parents=[common], help="index the bundled samples and search them")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("verify", parents=[common], help="audit Qdrant points against chunk rows")
    p.add_argument("--repair", action="store_true", help="delete orphan points and re-request documents missing points")
    p.set_defaults(fn=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"rag-pipeline: {exc}", file=sys.stderr)
        return 2
    return args.fn(args, settings)


if __name__ == "__main__":
    sys.exit(main())
