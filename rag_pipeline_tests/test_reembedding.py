"""A new embedding model or chunker: the UI marks partitions stale, backfills re-index them,
search keeps serving the previous vectors until the new collection is complete, then switches
atomically; the old collection is dropped. Real PostgreSQL, embedded Qdrant, openai over HTTP."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance
from dagster._core.definitions.data_version import StaleStatus
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._utils.test.data_versions import get_stale_status_resolver

from rag_pipeline.cli import main as cli_main, search_many
from rag_pipeline.core import generations, pipeline, records
from rag_pipeline.core.db import get_engine, index_generations
from rag_pipeline.core.vectorstore import open_client
from rag_pipeline.definitions import build_definitions, versioned_assets
from rag_pipeline.defs.resources import ChunkerResource
from rag_pipeline.settings import Settings, make_settings_embedder
from rag_pipeline_tests.helpers import FORMAT_FILES, assert_run_succeeded, tick_and_run, write_files

TOPICS = {
    f"topic-{i}.txt": f"Document {i} is about {word} and nothing else. {word.capitalize()} facts follow.\n\n"
    + " ".join(f"{word} detail {j} for reader {i}." for j in range(120))
    for i, word in enumerate(["volcanoes", "glaciers", "orchids", "lighthouses", "falconry", "typography"])
}
VECTORS = AssetKey("chunk_vectors")


def _backfill(defs, instance: DagsterInstance, keys: list[str], assets: list[str] | None = None) -> None:  # noqa: ANN001
    """What a single-run UI backfill of a partition range launches; `assets`: of those assets
    only (what "Materialize stale" selects)."""
    job = defs.resolve_job_def("index_documents")
    result = job.execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=[AssetKey(a) for a in assets] if assets else None,
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    )
    assert_run_succeeded(result)


def _stale(instance: DagsterInstance, settings: Settings, keys: list[str]) -> dict[str, StaleStatus]:
    resolver = get_stale_status_resolver(instance, versioned_assets(settings))
    return {k: resolver.get_status(VECTORS, k) for k in keys}


def _top_paths(settings: Settings, queries: list[str]) -> list[str]:
    return [hits[0]["path"] if hits else None for hits in search_many(settings, [(q, "kb") for q in queries], k=1)]


def _sent(server, before: dict[str, int], queries: list[str]) -> dict[str, int]:  # noqa: ANN001
    """Texts sent to the endpoint since `before`, and how often (search queries left out)."""
    return {t: n - before.get(t, 0) for t, n in server.texts.items() if n > before.get(t, 0) and t not in queries}


def _generations(engine) -> dict[str, str]:  # noqa: ANN001
    with engine.connect() as conn:
        return {r.embedding: r.state for r in conn.execute(sa.select(index_generations))}


def test_new_embedding_model_reindexes_behind_the_alias_then_switches(rag_env, embedding_server, monkeypatch):
    old = Settings.from_env()
    write_files(old.inbox_dir, "kb", {**FORMAT_FILES, **{k: v.encode() for k, v in TOPICS.items()}})
    queries = [f"{word} {word}" for word in ["volcanoes", "glaciers", "orchids", "lighthouses", "falconry", "typography"]]
    expected = list(TOPICS)
    engine = get_engine(old.database_url)
    with DagsterInstance.get() as instance:
        tick_and_run(build_definitions(old), instance)
        keys = list(instance.get_dynamic_partitions("documents"))  # partition order = range order
        assert len(keys) == 10
        ids = [ref.id for ref in records.refs_by_key(engine, keys).values()]  # what the core takes
        client = open_client(None, old.qdrant_path)
        old_collection = generations.collection_name(old.collection, old.embedding_spec.fingerprint)
        try:
            assert generations.aliased_collection(client, old.collection) == old_collection
        finally:
            client.close()
        assert _top_paths(old, queries) == expected
        assert set(_stale(instance, old, keys).values()) == {StaleStatus.FRESH}

        # A new model with another width: a query embedded with the wrong model would not even
        # fit the collection it is sent to.
        monkeypatch.setenv("RAG_EMBEDDING_MODEL", "test-embed-2")
        monkeypatch.setenv("RAG_EMBEDDING_DIMENSIONS", "128")
        new = Settings.from_env()
        new_defs = build_definitions(new)
        assert set(_stale(instance, new, keys).values()) == {StaleStatus.STALE}
        assert cli_main(["verify"]) == 0  # nothing is wrong: the new collection just does not exist yet

        sent_before = dict(embedding_server.texts)
        _backfill(new_defs, instance, keys[:5])
        stale = _stale(instance, new, keys)
        assert [stale[k] for k in keys] == [StaleStatus.FRESH] * 5 + [StaleStatus.STALE] * 5
        # Half re-embedded: search still reads the old collection, with the old model, and finds all.
        assert _top_paths(new, queries) == expected
        assert _generations(engine) == {old.embedding_spec.fingerprint: "serving", new.embedding_spec.fingerprint: "building"}
        rows = records.list_documents(engine)
        assert all(r.status == "indexed" for r in rows), [(r.path, r.status, r.error) for r in rows]
        [materialization] = instance.fetch_materializations(AssetKey("document_embeddings"), limit=1).records
        meta = materialization.asset_materialization.metadata
        assert meta["documents_left_to_reembed"].value == 5 and meta["switched_search"].value is False

        # The rest as "Materialize stale" selects them: the vectors, not the unchanged source.
        _backfill(new_defs, instance, keys[5:], ["chunk_vectors", "document_embeddings"])
        assert set(_stale(instance, new, keys).values()) == {StaleStatus.FRESH}
        assert _generations(engine) == {old.embedding_spec.fingerprint: "retired", new.embedding_spec.fingerprint: "serving"}
        client = open_client(None, new.qdrant_path)
        try:
            assert generations.aliased_collection(client, new.collection) == generations.collection_name(
                new.collection, new.embedding_spec.fingerprint
            )
            assert not client.collection_exists(old_collection)
        finally:
            client.close()
        assert _top_paths(new, queries) == expected
        # A model change sends every text once to the new model.
        with engine.connect() as conn:
            texts = set(conn.execute(sa.text("SELECT text FROM chunks")).scalars())
        assert _sent(embedding_server, sent_before, queries) == {t: 1 for t in texts}
        assert cli_main(["verify"]) == 0

        # A run that took the old configuration before the switch writes nothing after it; going
        # back to the old configuration later is a new build of it.
        switched_at = records.now() - dt.timedelta(seconds=60)
        # Its vector step does not take the re-embedded documents back to the old model either.
        stale_embedder = make_settings_embedder(old)
        try:
            outcomes = pipeline.compute_vectors(
                engine, ids, embedder=stale_embedder,
                chunker=ChunkerResource(max_tokens=old.chunk_tokens, overlap=old.chunk_overlap).config,
                embedding=old.embedding_spec.fingerprint, started_at=switched_at,
            ).outcomes
        finally:
            stale_embedder.close()
        assert {o.status for o in outcomes} == {"skipped"}
        # Nor does its source step, which used to reopen them for its configuration regardless.
        old_chunker = ChunkerResource(max_tokens=old.chunk_tokens, overlap=old.chunk_overlap).config
        outcomes = pipeline.extract(
            engine, old.inbox_dir, ids, config=pipeline.index_config(old_chunker, old.embedding_spec.fingerprint),
            limits=old.limits, started_at=switched_at,
        ).outcomes
        assert {o.status for o in outcomes} == {"skipped"}
        assert all(r.status == "indexed" for r in records.list_documents(engine))
        with pytest.raises(generations.GenerationRetired):
            generations.register(engine, old.collection, old.embedding_spec, started_at=switched_at)
        with pytest.raises(generations.GenerationRetired), engine.begin() as conn:
            generations.hold_for_write(conn, old_collection)
        assert _generations(engine)[old.embedding_spec.fingerprint] == "retired"

        # A new chunker keeps the collection; only texts that changed go to the endpoint.
        with engine.connect() as conn:
            before = set(conn.execute(sa.text("SELECT text FROM chunks")).scalars())
        monkeypatch.setenv("RAG_CHUNK_TOKENS", "100")
        rechunked = Settings.from_env()
        sent_before = dict(embedding_server.texts)
        stale = get_stale_status_resolver(instance, versioned_assets(rechunked))
        assert {stale.get_status(AssetKey("document_chunks"), k) for k in keys} == {StaleStatus.STALE}
        assert {stale.get_status(AssetKey("source_document"), k) for k in keys} == {StaleStatus.FRESH}
        _backfill(build_definitions(rechunked), instance, keys, ["document_chunks", "chunk_vectors", "document_embeddings"])
        with engine.connect() as conn:
            after = set(conn.execute(sa.text(
                "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.document_id AND c.chunker = d.indexed_chunker"
            )).scalars())
        sent = _sent(embedding_server, sent_before, queries)
        assert sent == {t: 1 for t in after - before} and after & before  # unchanged texts (the small files) were free
        assert _generations(engine)[new.embedding_spec.fingerprint] == "serving"
        assert set(_stale(instance, rechunked, keys).values()) == {StaleStatus.FRESH}
        assert _top_paths(rechunked, queries) == expected
        assert cli_main(["verify"]) == 0

        back = generations.register(engine, old.collection, old.embedding_spec, started_at=records.now())
        assert back.state == "building" and back.collection == old_collection
