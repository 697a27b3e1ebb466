"""The production topology on loopback, operated the way users operate it: a gRPC code server
(`dagster api grpc`), dagster-daemon with the sensor on and dagster-webserver, all on the
repository's dagster.yaml (PostgreSQL storage). Dropped files are indexed end to end across
processes; the UI's partitions page, driven by headless Chromium, shows them materialized;
after a change of embedding model the UI's GraphQL API reports the partitions stale, and a
partition backfill launched through it (the path the UI's "Materialize" button takes)
re-embeds them while search keeps answering, then switches search to the new collection."""

from __future__ import annotations

import json
import os
from collections import Counter
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from rag_pipeline.cli import search_many
from rag_pipeline.core import generations, records
from rag_pipeline.core.db import open_engine
from rag_pipeline.core.vectorstore import open_client
from rag_pipeline.devtools.topology import Topology, production_home, wait_for
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import FORMAT_FILES, run_errors, write_files

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
QUERY = "igneous rock from cooling lava"
REEMBED = [["chunk_vectors"], ["document_embeddings"]]  # what "Materialize stale" selects after a model change


class GraphQL:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"

    def __call__(self, query: str, **variables: object) -> dict:
        request = urllib.request.Request(
            self.url, data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def stale_status(self, path: list[str], partitions: list[str]) -> set[str]:
        data = self("""
            query Stale($key: AssetKeyInput!, $partitions: [String!]) {
              assetNodeOrError(assetKey: $key) {
                __typename
                ... on AssetNode { staleStatusByPartition(partitions: $partitions) }
              }
            }""", key={"path": path}, partitions=partitions)
        node = data["assetNodeOrError"]
        assert node["__typename"] == "AssetNode", node
        return set(node["staleStatusByPartition"])

    def assets(self) -> dict[str, dict]:
        """What the catalog shows of each asset."""
        data = self("""
            query Catalog {
              assetNodes {
                assetKey { path } description groupName kinds tags { key value }
                owners { __typename ... on TeamAssetOwner { team } ... on UserAssetOwner { email } }
                assetChecksOrError { ... on AssetChecks { checks { name description blocking } } }
              }
            }""")
        return {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}

    def latest_metadata(self, path: list[str], partition: str) -> dict[str, object]:
        """The metadata the partition page shows for the latest materialization."""
        data = self("""
            query Latest($key: AssetKeyInput!, $partition: String!) {
              assetOrError(assetKey: $key) {
                ... on Asset {
                  assetMaterializations(partitions: [$partition], limit: 1) {
                    metadataEntries {
                      label __typename
                      ... on IntMetadataEntry { intValue }
                      ... on FloatMetadataEntry { floatValue }
                      ... on TextMetadataEntry { text }
                      ... on MarkdownMetadataEntry { mdStr }
                    }
                  }
                }
              }
            }""", key={"path": path}, partition=partition)
        [materialization] = data["assetOrError"]["assetMaterializations"]
        return {
            e["label"]: next((e[k] for k in ("intValue", "floatValue", "text", "mdStr") if k in e), e["__typename"])
            for e in materialization["metadataEntries"]
        }

    def schedules_and_sensors(self) -> dict[str, str]:
        data = self("""
            query Automation {
              repositoriesOrError {
                ... on RepositoryConnection {
                  nodes {
                    schedules { name cronSchedule scheduleState { status } }
                    sensors { name sensorState { status } }
                  }
                }
              }
            }""")
        [repo] = data["repositoriesOrError"]["nodes"]
        return {
            **{s["name"]: f'{s["cronSchedule"]} {s["scheduleState"]["status"]}' for s in repo["schedules"]},
            **{s["name"]: s["sensorState"]["status"] for s in repo["sensors"]},
        }

    def launch_backfill(self, assets: list[list[str]]) -> str:
        data = self("""
            mutation Backfill($params: LaunchBackfillParams!) {
              launchPartitionBackfill(backfillParams: $params) {
                __typename
                ... on LaunchBackfillSuccess { backfillId }
                ... on PythonError { message stack }
                ... on InvalidStepError { invalidStepKey }
                ... on InvalidOutputError { invalidOutputName }
                ... on UnauthorizedError { message }
              }
            }""", params={"assetSelection": [{"path": p} for p in assets], "allPartitions": True,
                          "title": "re-embed after a model change"})
        result = data["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return result["backfillId"]

    def backfill(self, backfill_id: str) -> dict:
        return self("""
            query Backfill($id: String!) {
              partitionBackfillOrError(backfillId: $id) {
                __typename
                ... on PartitionBackfill {
                  status numPartitions
                  runs(limit: 10) { runId status tags { key value } }
                  error { message }
                }
              }
            }""", id=backfill_id)["partitionBackfillOrError"]


def _errors_of(backfill: dict) -> str:
    """The step errors of a backfill's runs that did not succeed (from the instance's event log)."""
    from dagster import DagsterInstance

    try:
        with DagsterInstance.get() as instance:
            return "\n".join(
                f"run {r['runId']} {r['status']}: {run_errors(instance.all_logs(r['runId']))}"
                for r in backfill.get("runs") or [] if r["status"] != "SUCCESS"
            )
    except Exception as exc:  # noqa: BLE001  (a message for a failing assertion must not fail itself)
        return f"(the runs' events could not be read: {exc!r})"


def _wait_indexed(engine, count: int, timeout: float) -> list:  # noqa: ANN001
    def indexed() -> list:
        rows = records.list_documents(engine)
        return rows if len(rows) == count and all(r.status == records.INDEXED for r in rows) else []

    return wait_for(indexed, timeout, f"{count} documents indexed", poll=1)


def _top_path(settings: Settings, query: str) -> str | None:
    [hits] = search_many(settings, [(query, "kb")], k=1)
    return hits[0]["path"] if hits else None


def _serving(settings: Settings) -> str | None:
    client = open_client(settings.qdrant_url, settings.qdrant_path, settings.qdrant_api_key)
    try:
        return generations.aliased_collection(client, settings.collection)
    finally:
        client.close()


def _assert_ui_describes_the_pipeline(gql: GraphQL, keys: list[str], paths: dict[str, str]) -> None:
    catalog = gql.assets()
    assert set(catalog) == {"source_document", "document_chunks", "chunk_vectors", "document_embeddings"}
    expected_kinds = {"source_document": {"postgres"}, "document_chunks": {"pandas", "postgres"},
                      "chunk_vectors": {"openai", "postgres"}, "document_embeddings": {"qdrant"}}
    for name, node in catalog.items():
        assert node["description"] and node["groupName"] == "ingestion"
        assert expected_kinds[name] <= set(node["kinds"]), (name, node["kinds"])
        assert {"team": "rag-platform", "__typename": "TeamAssetOwner"} in node["owners"]
        assert {"key": "domain", "value": "rag"} in node["tags"]
    checks = {c["name"]: c for n in catalog.values() for c in n["assetChecksOrError"]["checks"]}
    assert set(checks) == {"parsed", "chunks_within_token_limit", "points_match_chunks", "indexed_in_time"}
    assert all(c["description"] for c in checks.values()) and checks["chunks_within_token_limit"]["blocking"]

    pdf = next(k for k in keys if paths[k] == "papers/geology.pdf")
    source = gql.latest_metadata(["source_document"], pdf)
    assert source["bytes"] > 0 and source["parser"] == "pdf" and source["seconds"] >= 0
    chunks = gql.latest_metadata(["document_chunks"], pdf)
    assert chunks["chunks"] >= 1 and chunks["tokens"] > 0
    assert "Basalt is an igneous rock" in chunks["preview"] and chunks["preview"].startswith("| chunk |")
    vectors = gql.latest_metadata(["chunk_vectors"], pdf)
    assert vectors["embedding_calls"] >= 1 and vectors["cache_hits"] == 0 and vectors["model"] == "test-embed"
    points = gql.latest_metadata(["document_embeddings"], pdf)
    assert points["points"] == chunks["chunks"] and points["seconds_since_upload"] >= 0
    assert points["search_reads"] == points["collection"]

    automation = gql.schedules_and_sensors()
    assert automation["inbox_sensor"] == "RUNNING"
    assert automation["nightly_index_audit"] == "17 3 * * * RUNNING"


def _click_past_modals(driver, xpath: str) -> bool:  # noqa: ANN001
    """Click the element, first dismissing what the UI lays over the page on a first visit (its
    community newsletter modal, which can open a moment after the page has rendered, and whose
    backdrop outlives the dialog while it fades). False when something still covers it."""
    from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    try:
        for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            button.click()
        if driver.find_elements(By.CSS_SELECTOR, ".bp5-overlay-backdrop"):
            driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        driver.find_element(By.XPATH, xpath).click()
        return True
    except (ElementClickInterceptedException, StaleElementReferenceException):
        return False


def _screenshot_partitions(port: int, partition: str, artifact: Path) -> str:
    """Open the embeddings asset's partitions page in headless Chromium, wait for the status
    counts, save a screenshot with one partition's materialization open, return the page text."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/assets/document_embeddings?view=partitions")
        body = lambda: driver.find_element(By.TAG_NAME, "body").text  # noqa: E731
        wait_for(lambda: "Materialized (4)" in body(), 90, "the partitions page to show 4 materialized partitions")
        # Open a partition (found by its file's name, as an operator would) so the screenshot
        # shows the metadata of its latest materialization.
        wait_for(lambda: _click_past_modals(driver, f"//*[normalize-space(text())='{partition}']"), 30,
                 f"partition {partition} to be clickable")
        wait_for(lambda: "search_reads" in body(), 30, "the partition's materialization metadata")
        text = body()
        artifact.parent.mkdir(exist_ok=True)
        driver.save_screenshot(str(artifact))
        return text
    finally:
        driver.quit()


def test_topology_indexes_drops_shows_them_in_the_ui_and_reembeds_through_a_graphql_backfill(
    rag_env, pg_url, tmp_path, embedding_server, monkeypatch
):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        message = "Debian's chromium and chromium-driver are not installed"
        if os.environ.get("RAG_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    engine = open_engine(settings.database_url)
    topology = Topology(tmp_path)
    try:
        topology.start_code_server()
        topology.start_daemon()
        port = topology.start_webserver()
        gql = GraphQL(port)
        write_files(settings.inbox_dir, "kb", FORMAT_FILES)

        rows = _wait_indexed(engine, len(FORMAT_FILES), 240)
        # Partitions are named by knowledge base and path, as the UI's filter finds them.
        keys = sorted(r.partition_key for r in rows)
        assert keys == sorted(f"kb/{name}" for name in FORMAT_FILES)
        assert _top_path(settings, QUERY) == "papers/geology.pdf"
        assert gql.stale_status(["chunk_vectors"], keys) == {"FRESH"}

        _assert_ui_describes_the_pipeline(gql, keys, {r.partition_key: r.path for r in rows})

        page = _screenshot_partitions(port, keys[0], ARTIFACTS / "ui_partitions.png")
        assert "Materialized (4)" in page and "Failed (0)" in page and "Missing (0)" in page
        # What the UI shows of a partition: the collection search reads, and the checks' results.
        assert "points" in page and "collection" in page
        assert "search_reads" in page and "documents_left_to_reembed" in page

        # A new embedding model (another width), deployed the way a container is: the code
        # server restarts with new configuration. Nothing in the corpus changed, so the sensor
        # starts nothing; the UI shows the vectors stale and the user backfills them.
        old_collection = _serving(settings)
        topology.env.update(RAG_EMBEDDING_MODEL="test-embed-v2", RAG_EMBEDDING_DIMENSIONS="128")
        topology.restart_code_server()
        wait_for(lambda: gql.stale_status(["chunk_vectors"], keys) == {"STALE"}, 60,
                 "the webserver to see the new code version")
        assert gql.stale_status(["document_chunks"], keys) == {"FRESH"}

        before = Counter(embedding_server.texts)
        backfill_id = gql.launch_backfill(REEMBED)

        def finished() -> dict | None:
            state = gql.backfill(backfill_id)
            assert state["status"] not in ("FAILED", "COMPLETED_FAILED", "CANCELED"), (state, _errors_of(state))
            return state if state["status"] in ("COMPLETED", "COMPLETED_SUCCESS") else None

        # Search keeps answering from the old collection while the backfill runs.
        deadline = time.monotonic() + 300
        while not (state := finished()):
            assert time.monotonic() < deadline, "the backfill did not finish"
            assert _top_path(settings, QUERY) == "papers/geology.pdf"
            time.sleep(1)
        assert state["numPartitions"] == len(keys)
        # single_run backfill policy: one run for every partition, not one per document.
        assert [r["status"] for r in state["runs"]] == ["SUCCESS"], _errors_of(state)

        new_collection = _serving(settings)
        assert new_collection != old_collection
        assert generations.by_collection(engine, new_collection).spec.model == "test-embed-v2"
        assert generations.live_collections(engine, settings.collection) == [new_collection]
        with engine.connect() as conn:
            texts = set(conn.execute(sa.text("SELECT text FROM chunks")).scalars())
        # Each chunk text went to the new model once (the search queries left out).
        sent = Counter(embedding_server.texts) - before
        del sent[QUERY]
        assert sent == {t: 1 for t in texts}
        assert _top_path(settings, QUERY) == "papers/geology.pdf"
        assert gql.stale_status(["chunk_vectors"], keys) == {"FRESH"}
        assert gql.stale_status(["document_embeddings"], keys) == {"FRESH"}
    except BaseException:
        topology.print_log_tails()
        raise
    finally:
        topology.stop()
