"""A watched landing folder is listed only when something in it changed (`core/watch.py`)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

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
        previous_size=previous.listing_size if previous else 0, **kwargs,
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


def test_the_file_system_is_the_longest_mount_point_above_the_folder(tmp_path: Path):
    """Only local file systems are trusted to report every change (a network one misses other
    hosts' writes): the type comes from the mount the folder is on, not from one above it."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
        "30 22 0:40 / /srv/inbox rw shared:9 - nfs4 server:/export rw\n"
        "31 22 0:41 / /srv/in\\040box rw shared:10 - tmpfs tmpfs rw\n"
        "32 30 0:42 / /srv/inbox/local rw shared:11 - xfs /dev/vdb rw\n"
    )
    kind = lambda path: watch.file_system_type(Path(path), str(mountinfo))  # noqa: E731
    assert kind("/srv/inbox/kb/a.txt") == "nfs4" and "nfs4" not in watch.LOCAL_FILE_SYSTEMS
    assert kind("/srv/inbox/local/kb") == "xfs" and kind("/srv/inboxes") == "ext4"
    assert kind("/srv/in box/kb") == "tmpfs"  # spaces are escaped in the table
    assert watch.file_system_type(Path("/"), str(tmp_path / "missing")) is None


def test_a_new_folder_is_watched_without_redoing_the_watch_and_a_failed_watch_is_retried(tmp_path, monkeypatch):
    root = tmp_path / "inbox"
    (root / "kb").mkdir(parents=True)
    first = watch.mark_for(root)
    instance = first.split(":")[0]
    walked = []
    watch_tree = watch.FolderWatch._watch_tree
    monkeypatch.setattr(watch.FolderWatch, "_watch_tree", lambda self, top, **kw: walked.append(top) or watch_tree(self, top, **kw))
    (root / "kb" / "2026" / "12").mkdir(parents=True)
    (root / "kb" / "2026" / "12" / "a.txt").write_text("a")
    made = watch.mark_for(root)
    # Same watch, a change counted, and only the new folder's tree walked to watch it.
    assert made.split(":")[0] == instance and made != first
    assert walked == [os.fsencode(root / "kb" / "2026")]
    (root / "kb" / "2026" / "12" / "a.txt").write_text("changed")  # inside the folder watched since
    assert watch.mark_for(root) != made
    shutil.rmtree(root / "kb" / "2026")
    removed = watch.mark_for(root)
    assert removed.split(":")[0] == instance and watch.mark_for(root) == removed
    # A folder moved away redoes the watch: its watches' paths are no longer where they were.
    (root / "kb" / "old").mkdir()
    watch.mark_for(root)
    os.rename(root / "kb" / "old", root / "kb" / "new")
    assert watch.mark_for(root).split(":")[0] != instance

    # A watch that cannot be made is not tried on every tick, and is tried again later.
    other = tmp_path / "other"
    other.mkdir()
    calls = []

    def refuse(path):  # noqa: ANN001, ANN202
        calls.append(path)
        raise OSError(24, "inotify instance limit")

    monkeypatch.setattr(watch, "FolderWatch", refuse)
    assert watch.mark_for(other) is None and watch.mark_for(other) is None and len(calls) == 1
    later = time.monotonic() + watch.FULL_WALK_SECONDS + 1
    monkeypatch.setattr(watch.time, "monotonic", lambda: later)
    assert watch.mark_for(other) is None and len(calls) == 2
