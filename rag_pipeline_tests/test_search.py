"""Hybrid search: keyword vectors beside dense ones, fused in Qdrant; filters; citations; the
Python API. Real PostgreSQL, embedded Qdrant, the openai client over HTTP to the test endpoint,
the pipeline run in process (`rag-pipeline run`)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

import rag_pipeline
from rag_pipeline.cli import main as cli_main
from rag_pipeline.core import generations, sparse
from rag_pipeline.core.db import document_versions, get_engine, index_generations
from rag_pipeline.core.search import Searcher
from rag_pipeline.core.vectorstore import open_client
from rag_pipeline.pipeline_runner import run_pending
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import FORMAT_FILES, assert_run_succeeded, write_files

# Prose about the same subject in every file, so that only the identifier tells them apart.
FILLER = " ".join(
    f"The deployment service restarts workers and reports status line {i} to the operators." for i in range(30)
)
CORPUS = {
    "runbooks/errors.md": (
        "# Errors\n\n## Database\n\n" + FILLER + "\n\nIf the log shows ERR-4012 the replica lost its lease; "
        "promote the standby with failover-ctl.\n"
    ).encode(),
    "runbooks/restarts.md": ("# Restarts\n\n" + FILLER + "\n\nRestart the queue with RAG_QUEUE_RESET=1.\n").encode(),
    "notes/deploys.txt": (FILLER + "\n\nTicket INC-2231 tracked the slow deploy of release 7.").encode(),
    **FORMAT_FILES,
}


@pytest.fixture
def indexed(rig):
    """CORPUS indexed by the core steps (no Dagster) into a collection with keyword vectors,
    and a Searcher on it; the collection is named like the alias, as an index served without
    generations is."""
    rig.store.keyword = True
    for path, data in CORPUS.items():
        rig.write("ops", path, data)
    rig.settle()
    searcher = Searcher(client=rig.store.client, engine=rig.engine, alias=rig.store.collection,
                        make_embedder=lambda spec: rig.embedder)
    return rig, searcher


def _backfill(settings: Settings) -> None:
    """What a UI backfill of every partition launches, after a configuration change."""
    from rag_pipeline.definitions import build_definitions
    from rag_pipeline.instance import get_instance

    instance = get_instance(settings)
    keys = list(instance.get_dynamic_partitions("documents"))
    result = build_definitions(settings).resolve_job_def("index_documents").execute_in_process(
        instance=instance, raise_on_error=False,
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    )
    assert_run_succeeded(result)


def _index(settings: Settings) -> None:
    summary = run_pending(settings)
    assert summary["failed"] == 0 and summary["run_failures"] == 0, summary


def test_keyword_terms_keep_identifiers_whole_and_in_parts():
    assert sparse.terms("See ERR-4012 in RAG_SEARCH_MODE policies.") == [
        "see", "err-4012", "err", "4012", "rag_search_mode", "rag", "search", "mode", "policy",
    ]
    doc = sparse.document_vector("alpha alpha beta")
    # A repeated term weighs more than a single one, less than twice as much (BM25 saturation).
    weights = dict(zip(doc.indices, doc.values))
    alpha, beta = weights[sparse.term_index("alpha")], weights[sparse.term_index("beta")]
    assert beta < alpha < 2 * beta
    assert sparse.query_vector("the of and") .indices == []


def test_keyword_terms_are_the_same_past_the_memo_and_the_memo_stays_bounded():
    # Tokens are remembered, least recently used out: more distinct tokens than the memo holds
    # (ids, hashes) neither grow it nor change a single term or weight.
    text = "Herons ERR-4012 the wading-birds stand"
    first = sparse.terms(text), sparse.document_vector(text)
    flood = " ".join(f"id{i:x}-part{i % 97}" for i in range(sparse.MEMO_SIZE + 5000))
    flooded = sparse.document_vector(flood)
    assert len(flooded.indices) > sparse.MEMO_SIZE
    assert sparse._token_terms.cache_info().currsize <= sparse.MEMO_SIZE
    assert sparse.term_index.cache_info().currsize <= sparse.MEMO_SIZE
    assert (sparse.terms(text), sparse.document_vector(text)) == first
    assert sparse.terms(text) == ["heron", "err-4012", "err", "4012", "wading-birds", "wading", "bird", "stand"]


def test_hybrid_search_finds_exact_identifiers_with_citations_and_filters(indexed):
    rig, searcher = indexed
    engine = rig.engine
    params = rig.store.client.get_collection(rig.store.collection).config.params
    assert params.sparse_vectors[sparse.SPARSE_VECTOR].modifier.value == "idf"
    if True:  # the searcher's scope (it shares the rig's client)
        for query, path in [("ERR-4012", "runbooks/errors.md"), ("INC-2231", "notes/deploys.txt"),
                            ("RAG_QUEUE_RESET", "runbooks/restarts.md")]:
            keyword = searcher.search(query, k=3, mode="keyword")
            assert keyword.mode == "keyword" and keyword.hits[0].citation.path == path, (query, keyword.hits)
            hybrid = searcher.search(query, k=3)
            assert hybrid.mode == "hybrid" and hybrid.hits[0].citation.path == path, (query, hybrid.hits)
            top = hybrid.hits[0]
            # Scores of each mode that ranked it; the fused score is reciprocal-rank fusion's.
            assert {"hybrid", "keyword"} <= set(top.scores) and top.scores["hybrid"] > 0
            # Each mode's score of a fused hit is the score that mode's own search gives the chunk.
            for mode in set(top.scores) - {"hybrid"}:
                alone = {(h.document_id, h.citation.chunk_index): h.score for h in searcher.search(query, k=50, mode=mode).hits}
                assert top.scores[mode] == pytest.approx(alone[(top.document_id, top.citation.chunk_index)], rel=1e-4), mode
        dense = searcher.search("igneous rock from cooling lava", k=2, mode="dense")
        assert dense.mode == "dense" and dense.hits[0].citation.path == "papers/geology.pdf"
        assert set(dense.hits[0].scores) == {"dense"}

        # Citations: the offsets locate the hit's text in the stored extraction.
        hit = searcher.search("ERR-4012 failover", k=1).hits[0]
        c = hit.citation
        with engine.connect() as conn:
            text = conn.execute(sa.select(document_versions.c.text).where(
                (document_versions.c.document_id == hit.document_id) & (document_versions.c.version == c.version)
            )).scalar_one()
        assert c.start is not None and text[c.start:c.end] == hit.text and c.start > 0
        assert (c.knowledge_base, c.heading, hit.file_type) == ("ops", "Errors > Database", "md")
        assert c.indexed_at and c.chunk_index >= 0
        pdf = searcher.search("Granite cools slowly", k=1, file_types=["pdf"]).hits[0]
        assert pdf.citation.page == 2 and pdf.file_type == "pdf"

        # Filters: a folder, one file, file types, knowledge base, declared metadata.
        paths = lambda result: {h.citation.path for h in result.hits}  # noqa: E731
        assert paths(searcher.search("deployment service", k=10, path_prefix="runbooks")) == {
            "runbooks/errors.md", "runbooks/restarts.md"}
        assert paths(searcher.search("deployment service", k=10, path_prefix="runbooks/restarts.md")) == {
            "runbooks/restarts.md"}
        # The other .txt file shares no word with the query: no dense filler is fused in.
        assert paths(searcher.search("deployment service", k=10, file_types=["txt"])) == {"notes/deploys.txt"}
        assert searcher.search("deployment service", k=10, knowledge_base="elsewhere").hits == []
        utf8 = searcher.search("deployment service", k=10, metadata={"encoding": "utf-8"}).hits
        assert utf8 and all(h.metadata["encoding"] == "utf-8" for h in utf8)
        assert paths(searcher.search("deployment service", k=10, metadata={"encoding": "latin-9"})) == set()
        for mode in ("hybrid", "dense", "keyword"):
            assert paths(searcher.search("deployment service", k=10, mode=mode, path_prefix="notes/")) == {
                "notes/deploys.txt"}, mode


@pytest.mark.slow
def test_pipeline_indexes_keyword_vectors_and_the_python_api_and_cli_search_them(rag_env, capsys, tmp_path):
    """Through Dagster's runs (`rag-pipeline run`), settings from the environment, as users do."""
    settings = Settings.from_env()
    assert settings.search_mode == "hybrid" and settings.keyword_vectors
    write_files(settings.inbox_dir, "ops", CORPUS)
    _index(settings)
    client = open_client(None, settings.qdrant_path)
    try:
        collection = generations.aliased_collection(client, settings.collection)
        params = client.get_collection(collection).config.params
        assert params.sparse_vectors[sparse.SPARSE_VECTOR].modifier.value == "idf"
    finally:
        client.close()

    # The Python API, as an application calls it: settings from the environment.
    hits = rag_pipeline.search("INC-2231", k=1)
    assert hits[0].citation.path == "notes/deploys.txt" and isinstance(hits[0], rag_pipeline.SearchHit)

    # The CLI on top of it: every option, and the citation in its JSON.
    capsys.readouterr()
    assert cli_main(["search", "ERR-4012", "--mode", "keyword", "--path", "runbooks/", "--type", "md", "--json"]) == 0
    [top, *_] = json.loads(capsys.readouterr().out)
    assert (top["path"], top["heading"], set(top["scores"])) == ("runbooks/errors.md", "Errors > Database", {"keyword"})
    assert cli_main(["search", "ERR-4012", "--meta", "encoding"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert cli_main(["search", "INC-2231", "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[") and "ops/notes/deploys.txt" in out and "keyword" in out

    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"query": "ERR-4012", "expect": "ops/runbooks/errors.md", "kind": "identifier"}) + "\n")
    assert cli_main(["eval", str(queries), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["modes"]["hybrid"]["recall@1"] == 1.0 and report["modes"]["keyword"]["mrr"] == 1.0
    assert cli_main(["eval", str(queries), "--modes", "fuzzy"]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "no expectation"}\n')
    assert cli_main(["eval", str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


@pytest.mark.slow
def test_turning_keyword_vectors_on_builds_a_new_generation_without_embedding_again(rag_env, embedding_server, monkeypatch):
    monkeypatch.setenv("RAG_KEYWORD_VECTORS", "false")
    dense_only = Settings.from_env()
    write_files(dense_only.inbox_dir, "ops", CORPUS)
    _index(dense_only)
    engine = get_engine(dense_only.database_url)
    with Searcher.from_settings(dense_only) as searcher:
        # Asked for hybrid, a collection without keyword vectors answers densely.
        assert searcher.search("ERR-4012", k=3).mode == "dense"

    monkeypatch.setenv("RAG_KEYWORD_VECTORS", "true")
    hybrid = Settings.from_env()
    assert hybrid.embedding_spec.fingerprint == dense_only.embedding_spec.fingerprint + "+" + sparse.KEYWORD_VERSION
    sent = sum(embedding_server.texts.values())
    _backfill(hybrid)
    # Every dense vector came from the cache: only the search queries reached the endpoint.
    assert sum(embedding_server.texts.values()) == sent
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(index_generations.c.embedding, index_generations.c.state)).all())
    assert states == {dense_only.embedding_spec.fingerprint: "retired", hybrid.embedding_spec.fingerprint: "serving"}
    with Searcher.from_settings(hybrid) as searcher:
        result = searcher.search("ERR-4012", k=3)
        assert result.mode == "hybrid" and result.hits[0].citation.path == "runbooks/errors.md"
        assert result.collection == generations.collection_name(hybrid.collection, hybrid.embedding_spec.fingerprint)


def test_eval_ranks_documents_not_chunks_and_reports_each_mode(indexed, tmp_path):
    from rag_pipeline.core.evaluation import QuerySetError, evaluate, load_queries, render

    _, searcher = indexed
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join(json.dumps(q) for q in [
        {"query": "ERR-4012", "expect": "runbooks/errors.md", "kind": "identifier"},
        {"query": "INC-2231", "expect": "ops/notes/deploys.txt", "kind": "identifier"},
        {"query": "RAG_QUEUE_RESET", "expect": "runbooks/restarts.md", "kind": "identifier"},
        {"query": "igneous rock formed from cooling lava", "expect": "papers/geology.pdf", "kind": "paraphrase"},
        {"query": "refractor telescope lenses", "expect": "guides/astronomy.md", "kb": "ops", "kind": "paraphrase"},
    ]) + "\n# a comment line\n")
    report = evaluate(searcher, load_queries(queries), ["hybrid", "dense", "keyword"])
    modes = report["modes"]
    assert set(modes) == {"hybrid", "dense", "keyword"} and modes["hybrid"]["queries"] == 5
    identifiers = report["by_kind"]["identifier"]
    assert identifiers["keyword"]["recall@1"] == 1.0 and identifiers["hybrid"]["recall@1"] == 1.0
    for figures in modes.values():
        assert figures["recall@1"] <= figures["recall@5"] <= figures["recall@10"] and 0 <= figures["mrr"] <= 1
    assert modes["hybrid"]["recall@5"] >= modes["dense"]["recall@5"]
    table = render(report)
    assert table.splitlines()[0].split()[:4] == ["mode", "kind", "queries", "R@1"] and "identifier" in table
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "no expectation"}\n')
    with pytest.raises(QuerySetError, match="bad.jsonl:1"):
        load_queries(bad)


def test_rank_counts_each_document_once():
    from rag_pipeline.core.evaluation import rank_of
    from rag_pipeline.core.search import Citation, SearchHit

    def hit(doc: str, path: str) -> SearchHit:
        return SearchHit(doc, "t", 1.0, {}, Citation("kb", path, None, None, 0, 0, 1, "v", None))

    hits = [hit("a", "x.md"), hit("a", "x.md"), hit("b", "y.md"), hit("c", "z.md")]
    assert rank_of(hits, "z.md") == 3 and rank_of(hits, "kb/y.md") == 2 and rank_of(hits, "a") == 1
    assert rank_of(hits, "w.md") is None


def test_serve_answers_search_and_health_with_one_client_and_an_optional_token(indexed, monkeypatch):
    from starlette.testclient import TestClient

    from rag_pipeline.server import create_app

    _, searcher = indexed
    opened, closed = [], []
    monkeypatch.setattr(searcher, "close", lambda: closed.append(1))  # the rig owns the client
    with TestClient(create_app(open_searcher=lambda: opened.append(1) or searcher, token="t0ken")) as http:
        assert http.get("/healthz").json()["status"] == "ok"  # open: load balancers probe it
        assert http.post("/search", json={"query": "ERR-4012"}).status_code == 401
        assert http.post("/search", json={"query": "ERR-4012"}, headers={"Authorization": "Bearer nope"}).status_code == 401
        auth = {"Authorization": "Bearer t0ken"}
        for _ in range(3):
            response = http.post("/search", json={"query": "ERR-4012", "k": 2, "path_prefix": "runbooks"}, headers=auth)
            assert response.status_code == 200
        body = response.json()
        assert body["mode"] == "hybrid" and body["took_ms"] > 0
        top = body["hits"][0]
        assert top["citation"]["path"] == "runbooks/errors.md" and top["citation"]["start"] is not None
        assert "keyword" in top["scores"] and "chunker" not in top
        keyword = http.post("/search", json={"query": "INC-2231", "mode": "keyword", "file_types": ["txt"]}, headers=auth)
        assert [h["citation"]["path"] for h in keyword.json()["hits"]] == ["notes/deploys.txt"]
        for bad, field in [({"query": ""}, "query"), ({"query": "x", "k": 0}, "k"), ({"query": "x", "mode": "fuzzy"}, "mode"),
                           ({"query": "x", "metadata": {"a": 1}}, "metadata"), ([1], "object")]:
            response = http.post("/search", json=bad, headers=auth)
            assert response.status_code == 400 and field in response.json()["error"], bad
        assert http.post("/search", content=b"{not json", headers=auth).status_code == 400
        spec = http.get("/openapi.json").json()
        assert {"/search", "/healthz"} <= set(spec["paths"]) and spec["openapi"].startswith("3.")
    assert opened == [1] and closed == [1]  # one Searcher (one store client) for the server's life


def test_context_merges_neighbouring_chunks_per_document_within_a_budget(indexed):
    rig, searcher = indexed
    engine = rig.engine
    if True:  # the searcher's scope (it shares the rig's client)
        query = "deployment service operators ERR-4012"
        plain = searcher.search(query, k=4, path_prefix="runbooks/errors.md")
        assert len(plain.hits) >= 3 and all(h.context is None for h in plain.hits)
        result = searcher.search(query, k=4, path_prefix="runbooks/errors.md", context=1)
        top = result.hits[0]
        with engine.connect() as conn:
            text = conn.execute(sa.select(document_versions.c.text).where(
                document_versions.c.document_id == top.document_id)).scalar_one()
        # The hit's text inside its context, the context a passage of the document (overlaps read once).
        assert top.text in top.context and top.context in text and len(top.context) > len(top.text)
        # Other hits of the document within that neighbourhood carry no second copy, and no two
        # contexts share a chunk.
        near = [h for h in result.hits[1:] if abs(h.citation.chunk_index - top.citation.chunk_index) <= 1]
        assert all(h.context is None for h in near)
        windows = [(h.citation.chunk_index - 1, h.citation.chunk_index + 1) for h in result.hits if h.context]
        assert all(b[0] > a[1] or a[0] > b[1] for i, a in enumerate(windows) for b in windows[i + 1:]) or len(windows) == 1
        # A budget too small for the neighbourhood leaves the hit's own chunk; none at all, nothing.
        from rag_pipeline.core.tokens import get_encoding

        own = len(get_encoding().encode(top.text))
        tight = searcher.search(query, k=1, path_prefix="runbooks/errors.md", context=2,
                                context_tokens=own + 5).hits[0]
        assert tight.context is not None and tight.context.strip() == top.text.strip()
        assert searcher.search("ERR-4012", k=1, context=2, context_tokens=1).hits[0].context is None

        # Contexts for many hits over many documents cost two queries (the texts, the spans), not
        # one or two per hit.
        wide = searcher.search("deployment service operators", k=20).hits
        assert len({h.document_id for h in wide}) >= 3
        statements: list[str] = []
        listen = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
        sa.event.listen(searcher.engine, "before_cursor_execute", listen)
        try:
            with_context = searcher.with_context(wide, context=1, tokens=100_000)
        finally:
            sa.event.remove(searcher.engine, "before_cursor_execute", listen)
        assert len(statements) == 2, statements
        assert sum(h.context is not None for h in with_context) >= len({h.document_id for h in wide})


def test_a_collection_without_keyword_vectors_answers_every_mode_densely(rig):
    """An index built before keyword vectors keeps serving until its replacement is complete."""
    for path in ("runbooks/errors.md", "notes/deploys.txt"):
        rig.write("ops", path, CORPUS[path])
    rig.settle()
    assert not rig.store.has_keyword_vectors()
    searcher = Searcher(client=rig.store.client, engine=rig.engine, alias=rig.store.collection,
                        make_embedder=lambda spec: rig.embedder)
    for mode in ("hybrid", "keyword", "dense"):
        result = searcher.search("ERR-4012 replica lease", k=2, mode=mode)
        assert result.mode == "dense" and result.hits and all(set(h.scores) == {"dense"} for h in result.hits), mode
