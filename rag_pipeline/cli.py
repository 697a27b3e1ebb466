"""rag-pipeline: put files in, index them, see their state, search them, check the setup.

Every verb takes --json (machine-readable output) and --debug (a traceback instead of the one
line an error is otherwise reduced to). Settings come from the environment (README, "Settings").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rag_pipeline.settings import Settings

# Exit codes, for cron and CI (README "Using it").
OK, DOCUMENTS_FAILED, CANNOT_RUN = 0, 1, 2


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
    from rag_pipeline.core.endpoints import missing_key_problem
    from rag_pipeline.core.sources import SourceError
    from rag_pipeline.pipeline_runner import run_pending

    problem = missing_key_problem(
        provider=settings.embedder, base_url=settings.openai_base_url, api_key=settings.openai_api_key
    )
    if problem:  # caught before any run: nothing registered, nothing sent
        print(f"rag-pipeline run: {problem}", file=sys.stderr)
        return CANNOT_RUN
    try:
        summary = run_pending(
            settings, progress=not args.json and sys.stderr.isatty(), confirm_deletions=args.confirm_deletions or (),
        )
    except SourceError as exc:
        # Unreachable after retries, wrong credentials, no such bucket: one line naming the
        # setting, no traceback; nothing was registered or tombstoned.
        print(f"rag-pipeline run: {exc}", file=sys.stderr)
        return CANNOT_RUN
    text = (
        f"{summary['documents']} document(s) in {summary['runs']} run(s), {summary['seconds']:.2f}s: "
        f"{summary['indexed']} indexed, {summary['failed']} failed "
        f"({summary['failed_in_this_run']} in this run), {summary['pending']} pending"
    )
    for failure in summary["failures"]:
        if failure["this_run"] or args.strict:
            text += f"\n  failed: {failure['knowledge_base']}/{failure['path']}: {failure['error']}"
    for problem in summary["problems"]:
        text += f"\n  problem: {problem}"
    _emit(args, summary, text)
    for error in [*summary["source_errors"], *summary["errors"]]:
        print(f"rag-pipeline run: {error}", file=sys.stderr)
    if summary["run_failures"] or summary["source_errors"]:
        return CANNOT_RUN  # its documents wait ("waiting: ..."); the lines above say why
    if summary["failed_in_this_run"] or (args.strict and summary["failed"]):
        return DOCUMENTS_FAILED
    return OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from rag_pipeline.core import records
    from rag_pipeline.core.db import open_engine

    engine = open_engine(settings.database_url)
    rows = records.list_documents(engine, args.kb)
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
    # The id's first 8 characters: enough for `retry` (which also takes KB/PATH).
    lines = [
        f"{d['status']:<8} {d['document_id'][:8]}  {d['knowledge_base']}/{d['path']}"
        + (f"  ({d['error']})" if d["error"] else "")
        for d in docs
    ]
    lines.append("totals: " + (", ".join(f"{k} {v}" for k, v in sorted(totals.items())) or "no documents"))
    landing = _probe_landing_zone(settings)
    scale = records.sqlite_scale_problem(engine)
    if scale:
        print(f"rag-pipeline status: {scale}", file=sys.stderr)
    _emit(args, {"documents": docs, "totals": totals, "landing_zone": landing}, "\n".join(lines))
    if landing["error"]:
        # The documents above are as recorded; new uploads are not being seen. Exit 2, as `run`.
        print(f"rag-pipeline status: {landing['error']}", file=sys.stderr)
        return CANNOT_RUN
    return 0


def _probe_landing_zone(settings: Settings) -> dict:
    from rag_pipeline.core.sources import SourceError
    from rag_pipeline.settings import open_source

    try:
        source = open_source(settings)
        where = source.describe()
        source.probe()
    except SourceError as exc:
        return {"source": settings.inbox_url or str(settings.inbox_dir), "error": str(exc)}
    return {"source": where, "error": None}


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    """Re-drive parked documents: back to pending with a fresh attempt budget."""
    from rag_pipeline.core import records
    from rag_pipeline.core.db import open_engine

    engine = open_engine(settings.database_url)
    ids = None
    if args.documents:
        ids, unknown = resolve_documents(records.list_documents(engine), args.documents)
        if unknown:
            print(f"rag-pipeline retry: no such document: {', '.join(unknown)} (see `rag-pipeline status`)", file=sys.stderr)
            return CANNOT_RUN
    count = records.request_again(engine, ids, status=records.FAILED)
    _emit(
        args, {"requeued": count},
        f"{count} failed document(s) re-queued; the sensor or `rag-pipeline run` indexes them",
    )
    return 0


def resolve_documents(rows, names: list[str]) -> tuple[list[str], list[str]]:  # noqa: ANN001
    """Document ids for what a person typed: an id, the start of one (as `status` prints it),
    or KNOWLEDGE_BASE/PATH. Returns (ids, names matching no document or more than one)."""
    by_path = {f"{r.knowledge_base}/{r.path}": r.id for r in rows}
    ids, unknown = [], []
    for name in names:
        if name in by_path:
            ids.append(by_path[name])
            continue
        matches = [r.id for r in rows if r.id.startswith(name.lower())] if len(name) >= 4 else []
        if len(matches) == 1:
            ids.append(matches[0])
        else:
            unknown.append(name)
    return ids, unknown


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from rag_pipeline.core.search import Searcher

    metadata = {}
    for item in args.meta or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"rag-pipeline search: --meta {item!r}: expected KEY=VALUE", file=sys.stderr)
            return CANNOT_RUN
        metadata[key] = value
    with Searcher.from_settings(settings) as searcher:
        result = searcher.search(
            args.query, k=args.k, mode=args.mode, knowledge_base=args.kb, path_prefix=args.path,
            file_types=args.type or (), metadata=metadata, context=args.context, context_tokens=args.context_tokens,
        )
    payload = [_flat(h) for h in result.hits]
    lines = []
    for h in result.hits:
        c = h.citation
        where = f"p. {c.page}" if c.page is not None else (c.heading or "")
        scores = " ".join(f"{m} {v:.3f}" for m, v in sorted(h.scores.items()))
        lines.append(
            f"[{h.score:.3f}] {c.knowledge_base}/{c.path}" + (f" ({where})" if where else "")
            + f" #{c.chunk_index} chars {c.start}-{c.end}  [{scores}]\n  "
            + (h.text[:300].replace("\n", " ") if not args.context else (h.context or "(in the context above)"))
        )
    text = "\n\n".join(lines) or "no results"
    if result.mode != (args.mode or settings.search_mode):
        text += f"\n(searched {result.mode}: the index being served has no keyword vectors yet)"
    _emit(args, payload, text)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from rag_pipeline.server import serve

    return serve(settings, host=args.host, port=args.port)


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from rag_pipeline.core.evaluation import QuerySetError, evaluate, load_queries, render
    from rag_pipeline.core.search import Searcher

    try:
        queries = load_queries(Path(args.queries))
    except (OSError, QuerySetError) as exc:
        print(f"rag-pipeline eval: {exc}", file=sys.stderr)
        return CANNOT_RUN
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ("hybrid", "dense", "keyword")]
    if unknown or not modes:
        print(f"rag-pipeline eval: --modes {args.modes!r}: expected some of hybrid,dense,keyword", file=sys.stderr)
        return CANNOT_RUN
    with Searcher.from_settings(settings) as searcher:
        report = evaluate(searcher, queries, modes)
    report["queries_file"] = str(args.queries)
    report["embedding"] = settings.embedding_spec.fingerprint
    _emit(args, report, render(report))
    return OK


def search_many(settings: Settings, queries: list[tuple[str, str | None]], k: int, mode: str | None = None) -> list[list[dict]]:
    """Top-k hits for each (query, knowledge base), with one embedder call and one Qdrant client."""
    from rag_pipeline.core.search import Searcher

    with Searcher.from_settings(settings) as searcher:
        results = searcher.search_many([q for q, _ in queries], k=k, mode=mode, knowledge_bases=[kb for _, kb in queries])
    return [[_flat(h) for h in r.hits] for r in results]


def _flat(hit) -> dict:  # noqa: ANN001
    """A hit as the CLI's JSON has always shown it, with the citation's fields beside."""
    c = hit.citation
    return {
        "score": round(hit.score, 4), "document_id": hit.document_id, "knowledge_base": c.knowledge_base,
        "path": c.path, "chunk_index": c.chunk_index, "page": c.page, "heading": c.heading, "text": hit.text,
        "start": c.start, "end": c.end, "version": c.version, "indexed_at": c.indexed_at, "scores": hit.scores,
        "file_type": hit.file_type, "title": hit.title, "metadata": hit.metadata,
        **({"context": hit.context} if hit.context is not None else {}),
    }


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
            "\nNext: rag-pipeline search \"your question\"   |   UI: rag-pipeline ui  (http://127.0.0.1:3000)"
        )
    return 0 if summary["failed"] == 0 and summary["run_failures"] == 0 else 1


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from rag_pipeline.doctor import render, run_checks

    checks = run_checks(settings)
    broken = [c for c in checks if c.status == "FAILED"]
    _emit(args, {"ok": not broken, "checks": [c.as_dict() for c in checks]}, render(checks))
    return DOCUMENTS_FAILED if broken else OK


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    from rag_pipeline.instance import run_ui

    return run_ui(settings, host=args.host, port=args.port)


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    """Stop the data folder's PostgreSQL server (the default database); the next verb that
    needs it starts it again."""
    from rag_pipeline import embedded_pg

    if not settings.embedded_database:
        reason = "it is on SQLite (an older version's folder)" if settings.legacy_sqlite else "DATABASE_URL is set"
        _emit(args, {"stopped": False, "pid": None, "reason": reason},
              f"no embedded PostgreSQL server to stop for {settings.data_dir}: {reason}")
        return OK
    pid = embedded_pg.stop(data_dir=settings.data_dir)
    _emit(
        args, {"stopped": pid is not None, "pid": pid, "data_dir": str(settings.data_dir)},
        f"stopped PostgreSQL for {settings.data_dir} (pid {pid})" if pid is not None
        else f"PostgreSQL for {settings.data_dir} was not running",
    )
    return OK


def cmd_vectors(args: argparse.Namespace, settings: Settings) -> int:
    """The embedded vector store: copy an older version's folder into it, or optimize it."""
    from rag_pipeline.core import qdrant_edge_store
    from rag_pipeline.core.vectorstore import VectorStoreError, open_embedded

    if settings.qdrant_url:
        raise VectorStoreError("QDRANT_URL is set: the vectors verb works on the embedded store only")
    if args.action == "migrate":
        source = Path(args.source).expanduser().resolve() if args.source else settings.legacy_qdrant_path
        if source is None or not qdrant_edge_store.is_legacy_folder(source):
            raise VectorStoreError(
                f"nothing to migrate: {source or 'no folder given'} is not a folder of qdrant-client's local mode "
                "(one holding meta.json); name one with --from"
            )
        if source == settings.qdrant_path:
            raise VectorStoreError(f"QDRANT_PATH is {source}, the folder to copy: point QDRANT_PATH at a new folder")
        client = open_embedded(settings.qdrant_path)
        try:
            copied = qdrant_edge_store.migrate_legacy(source, client)
            client.initialise({"migrated_from": str(source), "collections": copied})
        finally:
            client.close()
        _emit(args, {"from": str(source), "to": str(settings.qdrant_path), "collections": copied},
              "\n".join([f"copied {source} into {settings.qdrant_path}:"]
                        + [f"  {name}: {count} points (counts equal)" for name, count in copied.items()]
                        + [f"{source} is no longer read and can be deleted"]))
        return OK
    client = open_embedded(settings.qdrant_path, legacy=settings.legacy_qdrant_path)
    try:
        names = [c.name for c in client.get_collections().collections]
        changed = {name: client.optimize(name, hnsw=args.hnsw) for name in names}
    finally:
        client.close()
    _emit(args, {"optimized": changed, "hnsw": args.hnsw},
          "\n".join(f"{name}: {'optimized' if done else 'already optimal'}" for name, done in changed.items()) or "no collections")
    return OK


EXIT_CODES = """exit codes:
  0  every document this run took up was indexed (documents waiting on a run in progress elsewhere
     are not failures)
  1  a document taken up by this run failed (refused, over a limit, parked); with --strict: any
     document in the failed state, whenever it failed
  2  the pipeline could not do its work: a setting or a service (database, Qdrant, endpoint,
     landing zone) is wrong or down; one line per problem on stderr, the documents wait"""

VERBS: dict[str, dict] = {
    "ingest": dict(
        help="copy files or folders into the landing zone (folder or bucket)",
        epilog="examples:\n  rag-pipeline ingest ~/handbook --kb handbook\n  rag-pipeline ingest report.pdf notes.md",
    ),
    "run": dict(
        help="index everything new, changed or deleted now, no daemon needed",
        epilog="examples:\n  rag-pipeline run\n  rag-pipeline run --strict --json   # in cron or CI\n\n" + EXIT_CODES,
    ),
    "status": dict(
        help="each document's state (pending / indexed / failed with the reason / deleting), its id and totals",
        epilog="examples:\n  rag-pipeline status\n  rag-pipeline status --failed --kb handbook",
    ),
    "retry": dict(
        help="re-queue failed documents (all, or those named)",
        epilog="examples:\n  rag-pipeline retry                       # every failed document\n"
        "  rag-pipeline retry handbook/leave.pdf    # by KNOWLEDGE_BASE/PATH\n"
        "  rag-pipeline retry 6e01cf3d              # by id, or its start as `status` prints it",
    ),
    "search": dict(
        help="the chunks closest to a query",
        epilog='examples:\n  rag-pipeline search "how many vacation days carry over"\n'
        '  rag-pipeline search "rollback" --kb engineering -k 10 --json\n'
        '  rag-pipeline search "ERR-4012" --mode keyword --path runbooks/ --type md',
    ),
    "serve": dict(
        help="the search API over HTTP: POST /search, GET /healthz, GET /openapi.json",
        epilog="examples:\n  rag-pipeline serve\n  RAG_SERVE_TOKEN=secret rag-pipeline serve --port 8080\n"
        "  curl -s 127.0.0.1:8000/search -d '{\"query\": \"ERR-4012\", \"k\": 3}'",
    ),
    "eval": dict(
        help="retrieval quality of a labelled query set: recall@1/5/10 and MRR per search mode",
        epilog="QUERIES is JSON lines: {\"query\": ..., \"expect\": PATH or KB/PATH or DOCUMENT_ID}, optional \"kb\" "
        "and \"kind\" (figures are also given per kind)\n\nexamples:\n"
        "  rag-pipeline eval benchmarks/eval/queries.jsonl\n"
        "  rag-pipeline eval queries.jsonl --modes hybrid,dense --json",
    ),
    "demo": dict(
        help="index the bundled samples and search them (the embedded defaults end to end)",
        epilog="example:\n  RAG_DATA_DIR=/tmp/rag-demo rag-pipeline demo",
    ),
    "verify": dict(
        help="audit Qdrant points against chunk rows",
        epilog="examples:\n  rag-pipeline verify\n  rag-pipeline verify --repair\n\n"
        "exit codes: 0 consistent (or repaired), 1 inconsistent, 2 a setting or service is wrong",
    ),
    "doctor": dict(
        help="check every configured part: database, Dagster storage, Qdrant, embedding endpoint, landing zone",
        epilog="examples:\n  rag-pipeline doctor\n  docker compose exec user_code rag-pipeline doctor --json\n\n"
        "exit codes: 0 every part works, 1 a part is broken (the table says which and what to do)",
    ),
    "ui": dict(
        help="the Dagster UI and daemon on this data, with the documented instance (run monitoring, retries)",
        epilog="examples:\n  rag-pipeline ui\n  rag-pipeline ui --port 3001",
    ),
    "vectors": dict(
        help="the embedded vector store: `migrate` an older version's folder into it, `optimize` it",
        epilog="examples:\n  rag-pipeline vectors migrate                 # <data>/qdrant into <data>/vectors\n"
        "  rag-pipeline vectors migrate --from OLD      # into QDRANT_PATH\n"
        "  rag-pipeline vectors optimize --hnsw         # build the HNSW graph (minutes at 100,000s of chunks)",
    ),
    "stop": dict(
        help="stop the data folder's PostgreSQL server (the default database; any verb starts it again)",
        epilog="example:\n  rag-pipeline stop",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  rag-pipeline ingest ~/docs --kb handbook && rag-pipeline run\n"
        '  rag-pipeline search "parental leave"\n  rag-pipeline doctor\n\n'
        "`rag-pipeline VERB --help` shows each verb's arguments and exit codes.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    common.add_argument("--debug", action="store_true", help="show the traceback and library warnings of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")

    def verb(name: str, fn) -> argparse.ArgumentParser:  # noqa: ANN001
        p = sub.add_parser(name, parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                           description=VERBS[name]["help"], **VERBS[name])
        p.set_defaults(fn=fn)
        return p

    p = verb("ingest", cmd_ingest)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to upload (folders keep their layout)")
    p.add_argument("--kb", default="default", help="knowledge base to upload into (default: %(default)s)")
    p = verb("run", cmd_run)
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if any document is in the failed state, not only those that failed in this run")
    p.add_argument("--confirm-deletions", action="append", metavar="SOURCE",
                   help="apply the deletions a SQL source's mass-deletion guard holds (max_delete_fraction); repeatable")
    p = verb("status", cmd_status)
    p.add_argument("--kb", metavar="NAME", help="only this knowledge base")
    p.add_argument("--failed", action="store_true", help="only parked documents, with their reasons (the dead letter)")
    p = verb("retry", cmd_retry)
    p.add_argument("documents", nargs="*", metavar="DOCUMENT",
                   help="document id (or its first characters, as `status` prints them) or KNOWLEDGE_BASE/PATH; "
                   "none: every failed document")
    p = verb("search", cmd_search)
    p.add_argument("query", metavar="QUERY", help="the question or words to look for")
    p.add_argument("--kb", metavar="NAME", help="only this knowledge base")
    p.add_argument("-k", type=int, default=5, metavar="N", help="results at most (default: %(default)s)")
    p.add_argument("--mode", choices=("hybrid", "dense", "keyword"),
                   help="hybrid (dense and keyword fused), dense or keyword (default: RAG_SEARCH_MODE, hybrid)")
    p.add_argument("--path", metavar="PREFIX", help="only this folder (policies/hr) or file of the knowledge base")
    p.add_argument("--type", action="append", metavar="EXT", help="only files of this type (pdf, md...); repeatable")
    p.add_argument("--meta", "--where", dest="meta", action="append", metavar="KEY=VALUE",
                   help="only documents with this metadata: a SQL source's declared column (--where project=OPS) "
                   "or what a parser declared (e-mail headers: --where from=a@b.c); repeatable")
    p.add_argument("--context", type=int, default=0, metavar="N",
                   help="give each hit's text with N neighbouring chunks either side, merged per document")
    p.add_argument("--context-tokens", type=int, default=2000, metavar="T",
                   help="token budget of all contexts together (default: %(default)s)")
    p = verb("eval", cmd_eval)
    p.add_argument("queries", metavar="QUERIES.jsonl", help="the labelled queries")
    p.add_argument("--modes", default="hybrid,dense,keyword", help="modes to measure (default: %(default)s)")
    p = verb("serve", cmd_serve)
    p.add_argument("--host", help="address to listen on (default: RAG_SERVE_HOST, 127.0.0.1)")
    p.add_argument("-p", "--port", type=int, help="port (default: RAG_SERVE_PORT, 8000)")
    verb("demo", cmd_demo)
    p = verb("verify", cmd_verify)
    p.add_argument("--repair", action="store_true", help="delete orphan points and re-request documents missing points")
    verb("doctor", cmd_doctor)
    p = verb("ui", cmd_ui)
    p.add_argument("--host", default="127.0.0.1", help="address the webserver listens on (default: %(default)s)")
    p.add_argument("-p", "--port", type=int, default=3000, help="webserver port (default: %(default)s)")
    p = verb("vectors", cmd_vectors)
    p.add_argument("action", choices=("migrate", "optimize"),
                   help="migrate: copy an older version's embedded Qdrant folder into the store; optimize: merge segments, vacuum")
    p.add_argument("--from", dest="source", metavar="FOLDER",
                   help="migrate: the older folder (default: <data>/qdrant when QDRANT_PATH is not set)")
    p.add_argument("--hnsw", action="store_true", help="optimize: also build the HNSW graph of each collection")
    verb("stop", cmd_stop)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    if not args.debug:
        # Libraries' notices (Dagster's BetaWarning, qdrant-client's) are for developers, not
        # for the person running a verb; --debug shows them.
        warnings.simplefilter("ignore")
    from rag_pipeline.diagnose import explain, first_line
    from rag_pipeline.settings import Settings

    try:
        settings = Settings.from_env()
    except ValueError as exc:  # SettingsError included: a one-line message naming the setting
        print(f"rag-pipeline: {first_line(str(exc))}", file=sys.stderr)
        return CANNOT_RUN
    existed = settings.data_dir.exists()
    if settings.legacy_sqlite and args.command != "stop":
        print(
            f"rag-pipeline: {settings.data_dir} was made by an older version and stays on SQLite (about 4x slower "
            "than the PostgreSQL default); to move, index into a new RAG_DATA_DIR",
            file=sys.stderr,
        )
    try:
        return args.fn(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        line = explain(exc, database_url=settings.database_url, qdrant_url=settings.qdrant_url)
        if line is None:
            line = f"{type(exc).__name__}: {first_line(str(exc))[:300]} (--debug shows the traceback)"
        print(f"rag-pipeline {args.command}: {line}", file=sys.stderr)
        return CANNOT_RUN
    finally:
        if not existed and settings.data_dir.exists():
            # The default is relative to the current folder: say where the state went.
            print(f"rag-pipeline: created the data folder {settings.data_dir} (RAG_DATA_DIR)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
