"""Re-uploads, duplicates, deletions and races, each reproduced at the moment that broke the
hand-rolled pipelines in the post-mortems, and shown to leave the index consistent."""

from __future__ import annotations

import os
import threading

import openai
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from rag_pipeline.core import detection, records
from rag_pipeline.core.db import chunks, document_versions, documents

V1 = "Whales sing long songs across the cold ocean. " * 12 + "\n\nKrill swarms feed the blue whale in summer."
V2 = "Volcanoes erupt molten basalt along the ridge. " * 12 + "\n\nPumice floats because it is full of gas."
V3 = "Glaciers carve deep valleys over thousands of years. " * 10


def _row(rig, doc_id: str):  # noqa: ANN001, ANN202
    return records.get_documents(rig.engine, [doc_id])[doc_id]


def _in_thread(fn, *args):  # noqa: ANN001, ANN202
    """Run fn in a thread; returns (thread, result box)."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _embed_with_rows_read_first(rig, ids):  # noqa: ANN001, ANN202
    """The embed step writing from the rows it read before calling the endpoint: the widest
    window a revision check must close (the job's write step re-reads them, narrowing it)."""
    return rig.write_points(rig.compute(ids))


def _join(thread, box) -> object:  # noqa: ANN001
    thread.join(60)
    assert not thread.is_alive(), "step did not finish"
    if "error" in box:
        raise box["error"]
    return box["result"]


# 1. Same content again ---------------------------------------------------------------------

def test_same_content_again_is_detection_only(rig):
    doc = rig.write("kb", "whales.txt", V1)
    rig.settle()
    before = _row(rig, doc)
    requests = rig.server.requests
    # Rewritten with identical bytes (new mtime), and merely touched: hashed, found unchanged.
    rig.write("kb", "whales.txt", V1)
    found = rig.detect()
    assert (found.new, found.changed, found.deleted, found.unchanged) == ([], [], [], 1)
    assert detection.pending_documents(rig.engine, None) == []
    after = _row(rig, doc)
    assert (after.revision, after.version, after.status, after.indexed_at) == (
        before.revision, before.version, "indexed", before.indexed_at
    )
    # A run over it anyway (a UI re-materialization) does no work either.
    assert {o.status for o in rig.extract([doc])} == {"skipped"}
    assert rig.index([doc]) == {doc: "skipped"}
    assert rig.server.requests == requests


# 2. Same upload twice at once --------------------------------------------------------------

def test_two_writers_of_one_upload_make_one_document(rig):
    rig.write("kb", "same.txt", V1)
    barrier = threading.Barrier(6)

    def writer() -> detection.Detection:
        barrier.wait()
        return rig.detect()

    threads = [_in_thread(writer) for _ in range(6)]
    results = [_join(*t) for t in threads]
    assert sum(len(r.new) for r in results) == 1, [(r.new, r.changed, r.unchanged, r.problems) for r in results]  # exactly one writer created it
    with rig.engine.connect() as conn:
        rows = conn.execute(sa.select(documents.c.id, documents.c.revision)).all()
    assert len(rows) == 1 and rows[0].revision == 1

    # Two writers registering different bytes for the path at the same moment: one row, and
    # each change counted (the later one wins).
    barrier = threading.Barrier(2)

    def register(version: str) -> records.Change:
        barrier.wait()
        return records.register_upload(rig.engine, "kb", "same.txt", version, 1, 1)

    pair = [_in_thread(register, v) for v in ("a" * 64, "b" * 64)]
    assert {_join(*t).kind for t in pair} == {"changed"}
    with rig.engine.connect() as conn:
        assert conn.execute(sa.select(documents.c.revision)).scalars().all() == [3]

    # The schema itself refuses a second row for the same identity, whatever the code does.
    with pytest.raises(IntegrityError), rig.engine.begin() as conn:
        conn.execute(
            documents.insert().values(
                id="other-id", knowledge_base="kb", path="same.txt", partition_key="kb/other", version="c" * 64, size_bytes=1,
                mtime_ns=1, status="pending", detected_at=records.now(), updated_at=records.now(),
            )
        )


# 3. Changed content: the old version serves until the new one is complete -------------------

def test_changed_document_stays_searchable_and_never_points_at_missing_chunks(rig):
    doc = rig.write("kb", "doc.txt", V1)
    rig.settle()
    v1_points = set(rig.point_ids(doc))

    def served_v1() -> None:
        rig.assert_invariants()
        assert set(rig.point_ids(doc)) == v1_points
        assert any("Krill" in t for t in rig.search_texts("krill swarms blue whale"))

    rig.write("kb", "doc.txt", V2)
    assert rig.detect().changed == [doc]
    served_v1()
    rig.extract([doc])
    served_v1()
    rig.chunk([doc])
    served_v1()
    rig.server.hold_next(1)
    thread, box = _in_thread(rig.embed, [doc])
    assert rig.server.wait_until_held()
    served_v1()  # mid-embedding: still the old version, whole
    rig.server.release()
    assert [o.status for o in _join(thread, box)] == ["processed"]
    assert not set(rig.point_ids(doc)) & v1_points
    assert set(rig.point_ids(doc).values()) == {_row(rig, doc).version}
    assert any("Pumice" in t for t in rig.search_texts("pumice floats gas"))
    assert not any("Krill" in t for t in rig.search_texts("krill swarms blue whale"))
    rig.assert_converged()


def test_reupload_while_old_version_is_embedding(rig):
    """The post-mortem: an embedding job for the old version finishes after the re-upload
    replaced its chunks, and writes embeddings for chunks that no longer exist."""
    doc = rig.write("kb", "doc.txt", V1)
    rig.prepare([doc])
    rig.server.hold_next(1)
    old_run, box = _in_thread(rig.embed, [doc])
    assert rig.server.wait_until_held()  # the v1 run is inside its endpoint call

    rig.write("kb", "doc.txt", V2)  # the re-upload
    assert rig.detect().changed == [doc]
    assert rig.index([doc]) == {doc: "processed"}  # v2's run overtakes and completes
    v2_points = rig.point_ids(doc)

    rig.server.release()
    # Its write step finds the document at v2 (already indexed) and writes nothing for v1.
    assert [o.status for o in _join(old_run, box)] in (["skipped"], ["superseded"])
    # The late v1 run wrote nothing: no point for a chunk that is gone, v2 intact.
    assert rig.point_ids(doc) == v2_points
    rig.assert_converged()


def test_old_run_finishing_first_is_replaced_cleanly(rig):
    """The other order: the old version's run completes between the re-upload's steps."""
    doc = rig.write("kb", "doc.txt", V1)
    rig.prepare([doc])
    rig.write("kb", "doc.txt", V2)
    rig.detect()
    # v1's embed step reads the row after the re-upload: the document is at v2 now.
    assert [o.status for o in rig.embed([doc])] == ["skipped"]
    assert rig.index([doc]) == {doc: "processed"}
    rig.assert_converged()


# 4. Deleted uploads ------------------------------------------------------------------------

def test_deleted_upload_is_purged_and_can_come_back(rig):
    keep = rig.write("kb", "keep.txt", V1)
    gone = rig.write("kb", "gone.txt", V2)
    rig.settle()
    rig.remove("kb", "gone.txt")
    found = rig.detect()
    assert found.deleted == [gone]
    assert _row(rig, gone).status == records.DELETING
    assert [o.status for o in rig.purge()] == ["processed"]
    assert rig.point_ids(gone) == {}
    assert not any("Pumice" in t for t in rig.search_texts("pumice floats gas"))
    with rig.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(chunks).where(chunks.c.document_id == gone)).scalar_one() == 0
    assert [r.id for r in records.list_documents(rig.engine)] == [keep]
    rig.assert_converged()

    # The same file uploaded again: the same document id, indexed again from the cache.
    sent = sum(rig.sent_texts().values())
    assert rig.write("kb", "gone.txt", V2) == gone
    assert rig.detect().new == [gone]
    rig.settle()
    assert sum(rig.sent_texts().values()) == sent
    rig.assert_converged()


def test_deletion_while_its_run_is_embedding(rig):
    doc = rig.write("kb", "doc.txt", V1)
    rig.prepare([doc])
    rig.server.hold_next(1)
    run, box = _in_thread(_embed_with_rows_read_first, rig, [doc])
    assert rig.server.wait_until_held()
    rig.remove("kb", "doc.txt")
    assert rig.detect().deleted == [doc]
    rig.purge()
    rig.server.release()
    assert [o.status for o in _join(run, box)] == ["superseded"]
    assert rig.point_ids(doc) == {}
    rig.assert_converged()


def test_unreadable_folder_or_settling_file_is_not_a_deletion(rig, monkeypatch):
    doc = rig.write("kb", "sub/doc.txt", V1)
    rig.settle()
    # A folder that cannot be listed (permissions; faked because tests may run as root).
    real_scandir = os.scandir

    def scandir(path):  # noqa: ANN001, ANN202
        if str(path).endswith("/kb/sub"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr("rag_pipeline.core.inbox.os.scandir", scandir)
    found = rig.detect()
    assert found.deleted == [] and any("kb/sub/: cannot list" in p for p in found.problems)
    monkeypatch.undo()
    rig.write("kb", "sub/doc.txt", V2)  # rewritten just now: held back while it settles
    assert detection.detect(rig.engine, rig.inbox, min_age_seconds=60).deleted == []
    assert _row(rig, doc).status == records.INDEXED


# 5. Races ----------------------------------------------------------------------------------

def test_two_runs_on_one_document_do_not_interleave(rig):
    doc = rig.write("kb", "doc.txt", V1)
    rig.detect()
    barrier = threading.Barrier(2)

    def run() -> dict[str, str]:
        barrier.wait()
        return rig.index([doc])

    results = [_join(*t) for t in [_in_thread(run), _in_thread(run)]]
    statuses = sorted(r[doc] for r in results)
    # Both may finish the same version (the second switch is a no-op) or one finds it done;
    # either way the index holds exactly one copy.
    assert statuses in (["processed", "processed"], ["processed", "skipped"], ["processed", "superseded"])
    rig.assert_converged()


def test_a_run_on_an_older_revision_never_overwrites_a_newer_one(rig):
    """ABA: v1 -> v2 -> v1 again while runs for each are in flight."""
    doc = rig.write("kb", "doc.txt", V1)
    rig.prepare([doc])
    rig.server.hold_next(1)
    run_a, box_a = _in_thread(_embed_with_rows_read_first, rig, [doc])  # read revision 1 (v1)
    assert rig.server.wait_until_held()
    rig.write("kb", "doc.txt", V2)
    rig.detect()  # revision 2
    rig.write("kb", "doc.txt", V1 + " ")  # revision 3: new bytes again
    rig.detect()
    rig.server.release()
    assert [o.status for o in _join(run_a, box_a)] == ["superseded"]
    assert _row(rig, doc).indexed_version is None  # revision 1's run switched nothing
    rig.settle()
    assert any(t.endswith("summer.") for t in rig.search_texts("krill swarms blue whale summer"))
    rig.assert_converged()


# 6. Commit before hand-off: test_sensor_lifecycle.test_sensor_hands_off_only_committed_rows

# 7. Embedding cache ------------------------------------------------------------------------

def test_each_distinct_text_is_embedded_once(rig):
    a = rig.write("kb", "a.txt", V1)
    rig.settle()
    first = rig.sent_texts()
    assert first and set(first.values()) == {1}
    # Rename, copy into another knowledge base, and a rebuild: no text is sent again.
    (rig.inbox / "kb" / "a.txt").rename(rig.inbox / "kb" / "renamed.txt")
    rig.write("other-kb", "copy.txt", V1)
    rig.settle()
    assert rig.sent_texts() == first
    assert _row(rig, a).status == records.DELETED
    records.request_again(rig.engine, [r.id for r in records.list_documents(rig.engine)])
    with rig.engine.begin() as conn:  # as if the extracted text were gone too
        conn.execute(document_versions.update().values(parser="stale"))
    rig.settle()
    assert rig.sent_texts() == first
    rig.assert_converged()


def test_retry_after_a_failure_mid_run_resends_nothing_already_embedded(rig):
    docs = [rig.write("kb", f"d{i}.txt", " ".join(f"term{i}x{j}" for j in range(150))) for i in range(6)]
    rig.prepare(docs)
    # Two batches succeed, then the endpoint answers 500 past the client's retries.
    retries = rig.embedder.max_retries
    rig.server.set_faults(next_statuses=[None, None] + [500] * (retries + 1))
    with pytest.raises(openai.InternalServerError):
        rig.embed(docs)
    assert all(_row(rig, d).status == records.PENDING for d in docs)  # waiting, not failed
    assert rig.store.count() == 0  # nothing half-written
    sent_before_retry = rig.sent_texts()
    assert sum(sent_before_retry.values()) == 16  # two batches of 8 banked in the cache
    assert rig.index(docs) == dict.fromkeys(docs, "processed")
    sent = rig.sent_texts()
    assert set(sent.values()) == {1}  # nothing sent twice
    assert sum(sent.values()) > sum(sent_before_retry.values())
    rig.assert_converged()


def test_partial_upload_then_full_upload(rig):
    """A writer that copies without a temporary name: the scan sees half a file first."""
    doc = rig.write("kb", "big.txt", V1[: len(V1) // 2])
    rig.settle()
    half = _row(rig, doc).indexed_version
    rig.write("kb", "big.txt", V1)
    rig.settle()
    row = _row(rig, doc)
    assert row.indexed_version != half and row.revision == 2
    assert set(rig.point_ids(doc).values()) == {row.version}
    rig.assert_converged()


