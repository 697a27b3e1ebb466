"""What the Dagster UI shows of documents, read from its own GraphQL API in process: partition
keys a person can find a file by, failed documents counted as failed (not materialized) even
inside a run whose other documents succeed, and an index built with document ids as partition
keys moved to readable keys without embedding anything again. Dagster's storage is the
repository's dagster.yaml on PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import sqlalchemy as sa
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance, RunsFilter
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_graphql.test.utils import execute_dagster_graphql

from rag_pipeline.core import records
from rag_pipeline.core.db import MIGRATIONS_DIR, get_engine
from rag_pipeline.core.identity import partition_key
from rag_pipeline.definitions import build_definitions
from rag_pipeline.defs.failures import FAILED_IN_RUN_TAG
from rag_pipeline.devtools.topology import production_home
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import tick_and_run, write_files

ASSETS = ("source_document", "document_chunks", "chunk_vectors", "document_embeddings")
GOOD = {
    "manuals/pump.txt": b"The pump primes itself after the valve is opened halfway.",
    "notes/harbour.md": b"# Harbour\n\nTides turn every six hours; moor with slack lines.",
    "odd, name [draft].txt": b"Commas and brackets in a file name still make a searchable document.",
}
REFUSED_IN_RUN = "sheets/budget.numbers"  # read, then refused by the parser: an unsupported format
REFUSED_UNREAD = "dumps/huge.txt"  # over RAG_MAX_FILE_BYTES: refused on the listing, never opened

STATUS = """
query Status($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      partitionKeysByDimension { partitionKeys }
      partitionStats { numMaterialized numFailed numMaterializing numPartitions }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions materializingPartitions }
      }
    }
  }
}"""


class UI:
    """Dagster's GraphQL API over the project's definitions, loaded in this process."""

    def __init__(self, instance: DagsterInstance, tmp_path: Path) -> None:
        module = tmp_path / "ui_definitions.py"
        module.write_text("from rag_pipeline.definitions import build_definitions\n\ndefs = build_definitions()\n")
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(python_file=str(module), attribute="defs"), location_name="rag_pipeline"
        )
        self._process = WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin))

    def status(self, asset: str) -> dict:
        result = execute_dagster_graphql(self._process.create_request_context(), STATUS, {"key": {"path": [asset]}})
        assert not result.errors, result.errors
        node = result.data["assetNodeOrError"]
        [dimension] = node["partitionKeysByDimension"]
        return {"keys": dimension["partitionKeys"], **node["partitionStats"], **node["assetPartitionStatuses"]}

    def close(self) -> None:
        self._process.__exit__(None, None, None)


def _latest_metadata(instance: DagsterInstance, asset: str, key: str) -> dict:
    [record] = instance.fetch_materializations(AssetRecordsFilter(AssetKey(asset), asset_partitions=[key]), limit=1).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_the_ui_finds_files_by_name_and_counts_refused_documents_as_failed(rag_env, pg_url, tmp_path, monkeypatch):
    for name, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RAG_MAX_FILE_BYTES", "4096")
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", {**GOOD, REFUSED_IN_RUN: b"PK\x03\x04 not a workbook", REFUSED_UNREAD: b"x" * 5000})
    defs = build_definitions(settings)
    engine = get_engine(settings.database_url)
    with DagsterInstance.get() as instance:
        first, [run] = tick_and_run(defs, instance)
        assert run.success, "a refused document fails alone, not the run"
        good_keys = {partition_key("kb", p) for p in GOOD}
        bad_keys = {f"kb/{REFUSED_IN_RUN}", f"kb/{REFUSED_UNREAD}"}
        ui = UI(instance, tmp_path)
        try:
            for asset in ASSETS:
                status = ui.status(asset)
                assert set(status["keys"]) == good_keys | bad_keys, asset
                # One run held the good documents and the refused one: only the refused is red.
                assert (status["numFailed"], status["numMaterialized"], status["numMaterializing"]) == (2, 3, 0), (asset, status)
                assert set(status["failedPartitions"]) == bad_keys, asset
                assert set(status["materializedPartitions"]) >= good_keys, asset
            # A person filters the partitions by file name: every good key holds its file name.
            keys = ui.status("document_embeddings")["keys"]
            for path in GOOD:
                [key] = [k for k in keys if Path(path.replace(",", "_").replace("[", "_").replace("]", "_")).name in k]
                assert key.startswith("kb/"), key
            assert "kb/manuals/pump.txt" in keys and "kb/notes/harbour.md" in keys
            # A name Dagster's UI cannot select (commas, brackets) gets a readable, stable fallback.
            assert re.fullmatch(r"kb/odd_ name _draft_\.txt~[0-9a-f]{12}", partition_key("kb", "odd, name [draft].txt"))

            # The failed partition's metadata says why, and names its file.
            meta = _latest_metadata(instance, "source_document", f"kb/{REFUSED_IN_RUN}")
            assert "unsupported file type '.numbers'" in meta["reason"]
            assert (meta["knowledge_base"], meta["path"], meta["status"]) == ("kb", REFUSED_IN_RUN, "failed")
            # Every asset's materialization of every document names its knowledge base and path.
            for asset in ASSETS:
                for path in [*GOOD, REFUSED_IN_RUN]:
                    assert _latest_metadata(instance, asset, partition_key("kb", path))["path"] == path, (asset, path)
            # The failure the Runs page lists names the file and the reason.
            [record] = instance.get_runs(RunsFilter(tags={FAILED_IN_RUN_TAG: run.run_id}))
            [failure] = instance.all_logs(record.run_id, of_type=DagsterEventType.RUN_FAILURE)
            assert f"kb/{REFUSED_IN_RUN}: unsupported file type '.numbers'" in failure.message

            # The too-large file shrinks: indexed, its partition is materialized and no longer failed.
            (settings.inbox_dir / "kb" / REFUSED_UNREAD).write_bytes(b"A dump small enough to read after all.")
            _, [again] = tick_and_run(defs, instance, cursor=first.cursor)
            assert again.success
            status = ui.status("document_embeddings")
            assert set(status["failedPartitions"]) == {f"kb/{REFUSED_IN_RUN}"}
            assert status["numFailed"] == 1 and status["numMaterialized"] == 4
        finally:
            ui.close()
    by_path = {r.path: r for r in records.list_documents(engine)}
    assert by_path[REFUSED_IN_RUN].status == "failed" and by_path[REFUSED_UNREAD].status == "indexed"


def test_an_index_with_document_ids_as_partition_keys_moves_to_readable_keys_without_embedding(
    rag_env, embedding_server, tmp_path
):
    from alembic import command
    from alembic.config import Config

    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", GOOD)
    defs = build_definitions(settings)
    engine = get_engine(settings.database_url)
    with DagsterInstance.get() as instance:
        first, _ = tick_and_run(defs, instance)
        rows = records.list_documents(engine)
        assert {r.status for r in rows} == {"indexed"}
        # What an index built before readable keys looks like: partitions named by document id,
        # and our tables one migration behind (no partition_key column).
        for key in instance.get_dynamic_partitions("documents"):
            instance.delete_dynamic_partition("documents", key)
        instance.add_dynamic_partitions("documents", [r.id for r in rows])
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0006")
        with engine.connect() as conn:
            assert "partition_key" not in {c["name"] for c in sa.inspect(conn).get_columns("documents")}
            points_before = conn.execute(sa.text("SELECT count(*) FROM chunks")).scalar_one()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        assert {r.id: r.partition_key for r in records.list_documents(engine)} == {
            r.id: partition_key("kb", r.path) for r in rows
        }

        texts = sum(embedding_server.texts.values())
        # The sensor's cursor as the old code left it (it did not know of readable keys).
        old_cursor = {k: v for k, v in json.loads(first.cursor).items() if k != "keys_readable"}
        moved, runs = tick_and_run(defs, instance, cursor=json.dumps(old_cursor))
        assert not runs, "nothing is read, parsed or embedded again"
        assert sum(embedding_server.texts.values()) == texts
        assert sorted(instance.get_dynamic_partitions("documents")) == sorted(partition_key("kb", p) for p in GOOD)
        for asset in ASSETS:  # recorded materialized under the new keys: the UI stays green
            for r in rows:
                meta = _latest_metadata(instance, asset, partition_key("kb", r.path))
                assert (meta["path"], meta["moved_from_partition"]) == (r.path, r.id)
        # The next tick has nothing left to move, and does not look again.
        idle, runs = tick_and_run(defs, instance, cursor=moved.cursor)
        assert idle.skip_reason and not runs
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM chunks")).scalar_one() == points_before
    assert {r.status for r in records.list_documents(engine)} == {"indexed"}
