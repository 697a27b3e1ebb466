"""A watched landing folder is listed only when something in it changed (`core/watch.py`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance

from rag_pipeline.core import detection, watch
from rag_pipeline.core.identity import document_id
from rag_pipeline.core.sources import FolderSource
from rag_pipeline.definitions import build_definitions
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import tick_and_run, write_files


def _detect(rig, previous: detection.Detection | None = None, **kwargs) -> detection.Detection:  # noqa: ANN001
    return detection.detect(
        rig.engine, FolderSource(rig.inbox), previous_digest=previous.listing_digest if previous else None,
        previous_mark=previous.watch_mark if previous else None,
        previous_unchanged=previous.listing_size if previous else 0, **kwargs,
    )


def test_an_unchanged_watched_folder_is_not_listed_and_every_kind_of_change_is(rig):
    a = rig.write("kb", "docs/a.txt", "alpha")
    rig.write("kb", "b.txt", "bravo")
    first = _detect(rig)
    assert sorted(first.new) == sorted([a, document_id("kb", "b.txt")]) and first.watch_mark and first.listed
    idle = _detect(rig, first)
    assert not idle.listed and idle.unchanged == 2 and idle.listing_digest == first.listing_digest
    # Reading (as a run does) and hidden or temporary files (as an upload in progress) change nothing.
    (rig.inbox / "kb" / "docs" / "a.txt").read_bytes()
    (rig.inbox / "kb" / "docs" / ".upload.part").write_text("half")
    assert not _detect(rig, idle).listed
    # Rewritten in place with its size and time put back: only the kernel saw it.
    target = rig.inbox / "kb" / "docs" / "a.txt"
    st = target.stat()
    with open(target, "r+b") as f:
        f.write(b"ALPHA")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = _detect(rig, idle)
    # Same size and time: the listing's digest is unchanged, so no file is hashed; but the
    # listing was taken, which is what the watch is for (a new time or size is then registered).
    assert changed.listed
    os.utime(target)
    changed = _detect(rig, changed)
    assert changed.listed and changed.changed == [a]
    # A rename into a real name, a new folder, a deletion: each found at once.
    os.rename(rig.inbox / "kb" / "docs" / ".upload.part", rig.inbox / "kb" / "docs" / "c.txt")
    renamed = _detect(rig, changed)
    assert renamed.new == [document_id("kb", "docs/c.txt")]
    rig.write("kb", "new/deep/d.txt", "delta")
    made = _detect(rig, renamed)
    assert made.new == [document_id("kb", "new/deep/d.txt")] and made.watch_mark != renamed.watch_mark
    rig.write("kb", "new/deep/e.txt", "echo")  # inside the folder made after the watch began
    inside = _detect(rig, made)
    assert inside.new == [document_id("kb", "new/deep/e.txt")]
    assert not _detect(rig, inside).listed
    rig.remove("kb", "b.txt")
    assert _detect(rig, inside).deleted == [document_id("kb", "b.txt")]


def test_a_folder_still_settling_or_not_watchable_is_listed_every_time(rig, monkeypatch):
    rig.write("kb", "a.txt", "alpha")
    settling = _detect(rig, min_age_seconds=3600)
    assert settling.watch_mark == ""  # held back: it becomes due with no event to say so
    assert _detect(rig, settling, min_age_seconds=3600).listed
    monkeypatch.setattr(watch, "file_system_type", lambda path: "nfs4")
    monkeypatch.setattr(watch, "_WATCHES", type(watch._WATCHES)())
    first = _detect(rig)
    assert first.watch_mark == "" and _detect(rig, first).listed
    # Walked, an unchanged listing keeps its digest: every idle call skips the database.
    second = _detect(rig, first)
    third = _detect(rig, second)
    assert second.listing_digest == third.listing_digest == first.listing_digest
    assert list(second.seconds) == list(third.seconds) == ["list"] and third.unchanged == 1


def test_a_folder_replaced_is_watched_afresh_and_watches_are_bounded(tmp_path: Path):
    root = tmp_path / "inbox"
    (root / "kb").mkdir(parents=True)
    before = watch.mark_for(root)
    assert before and watch.mark_for(root) == before
    os.rename(root, tmp_path / "old")
    (root / "kb").mkdir(parents=True)
    after = watch.mark_for(root)
    assert after and after != before
    others = []
    for i in range(watch.MAX_WATCHES + 2):
        (tmp_path / f"o{i}").mkdir()
        others.append(watch.mark_for(tmp_path / f"o{i}"))
    assert all(others) and len(watch._WATCHES) <= watch.MAX_WATCHES


def test_the_sensor_skips_the_walk_of_a_watched_inbox_until_something_changes(rag_env, monkeypatch):
    from rag_pipeline.defs import sensors

    monkeypatch.setattr(sensors, "RESTLESS_TICK", 0.25)  # resting applies to walks, not to a watch
    settings = Settings.from_env()
    defs = build_definitions(settings)
    write_files(settings.inbox_dir, "kb", {"a.txt": b"Lighthouses guide ships along rocky coasts."})
    with DagsterInstance.get() as instance:
        first, runs = tick_and_run(defs, instance)
        assert len(runs) == 1
        cursor = json.loads(first.cursor)
        assert cursor["watch"] and cursor["files"] == 1
        # A slow last tick would make an unwatched inbox rest; a watched one is not walked.
        slow = json.dumps({**cursor, "ticked_at": time.time(), "tick_seconds": 2.0, "idle": True})
        idle, runs = tick_and_run(defs, instance, cursor=slow)
        assert not runs and "watched, not walked" in idle.skip_reason.skip_message
        assert "1 files unchanged" in idle.skip_reason.skip_message
        write_files(settings.inbox_dir, "kb", {"b.txt": b"Beekeepers harvest honey in late summer."})
        found, runs = tick_and_run(defs, instance, cursor=idle.cursor)
        assert len(runs) == 1 and json.loads(found.cursor)["files"] == 2
        # However quiet the watch, the inbox is walked every FULL_WALK_SECONDS.
        stale = json.dumps({**json.loads(found.cursor), "walked_at": time.time() - watch.FULL_WALK_SECONDS - 1})
        walked, _ = tick_and_run(defs, instance, cursor=stale)
        assert "watched, not walked" not in walked.skip_reason.skip_message
        assert json.loads(walked.cursor)["walked_at"] > time.time() - 5


@pytest.mark.parametrize("kind", ["tmpfs", "ext4", "nfs4", "fuse.sshfs", None])
def test_only_local_file_systems_are_trusted_to_report_every_change(kind):
    assert (kind in watch.LOCAL_FILE_SYSTEMS) == (kind in ("tmpfs", "ext4"))
    assert watch.file_system_type(Path("/")) is not None
