"""An S3 bucket as the landing zone, against a real S3 server (SeaweedFS on loopback, see
devtools/s3_server.py): listing without downloads, conditional reads in the run, the CLI end to end,
and the faults an operator meets (wrong secret, a server gone mid-run)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from rag_pipeline.core import detection, pipeline, records
from rag_pipeline.core.db import open_engine
from rag_pipeline.core.identity import document_id
from rag_pipeline.core.parsing import Limits
from rag_pipeline.core.sources import SourceMisconfigured, SourceUnavailable
from rag_pipeline.core.sources import s3
from rag_pipeline.core.sources.s3 import S3Source, make_client

CORPUS = {
    "notes/lighthouse.txt": b"Lighthouses guide ships along dangerous rocky coasts at night.",
    "notes/bees.txt": b"Beekeepers harvest honey from wooden hives in late summer.",
    "maps/old.md": b"# Maps\n\nCartographers drew sea monsters on the edges of old maps.",
    "glaciers.txt": b"Glaciers carve deep valleys as they slowly grind downhill.",
    "volcano.txt": b"Volcanoes erupt when magma rises through cracks in the crust.",
}


def _put(client, bucket: str, files: dict[str, bytes], prefix: str = "landing/kb/") -> None:  # noqa: ANN001
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=prefix + rel, Body=data)


class Counted:
    """S3 requests by operation, counted on the client's own event hooks."""

    def __init__(self) -> None:
        self.client = make_client(connect_timeout=2.0, read_timeout=10.0)
        self.calls: Counter = Counter()
        self.client.meta.events.register("before-call.s3", self._count)

    def _count(self, model, **_) -> None:  # noqa: ANN001, ANN003
        self.calls[model.name] += 1

    def take(self) -> Counter:
        calls, self.calls = self.calls, Counter()
        return calls


def test_detection_reads_only_new_and_changed_objects(s3_server, s3_bucket, pg_url):
    raw = s3_server.client()
    _put(raw, s3_bucket, CORPUS)
    raw.put_object(Bucket=s3_bucket, Key="landing/kb/empty-folder/", Body=b"")  # a console's folder marker
    _put(raw, s3_bucket, {".hidden.txt": b"x", "draft.txt.part": b"x", "~lock.txt": b"x", ".cache/a.txt": b"x"})
    raw.put_object(Bucket=s3_bucket, Key="landing/stray.txt", Body=b"outside any knowledge base")
    raw.put_object(Bucket=s3_bucket, Key="landing/bad kb!/a.txt", Body=b"invalid knowledge base name")
    raw.put_object(Bucket=s3_bucket, Key="landing/kb/huge.txt", Body=b"y" * 5000)
    raw.put_object(Bucket=s3_bucket, Key="elsewhere/kb/a.txt", Body=b"outside the prefix")
    counted = Counted()
    source = S3Source(url=f"s3://{s3_bucket}/landing", client=counted.client)
    engine = open_engine(pg_url)

    found = detection.detect(engine, source, max_file_bytes=4096)
    assert sorted(found.new) == sorted(document_id("kb", p) for p in CORPUS)
    assert found.refused == {document_id("kb", "huge.txt"): "file is 4.9 KB, over the limit of 4.0 KB (RAG_MAX_FILE_BYTES)"}
    assert any("stray.txt" in p for p in found.problems) and any("bad kb!" in p for p in found.problems)
    calls = counted.take()
    # Registered from the listing alone: the run's read is an object's only download.
    assert calls["GetObject"] == 0 and calls["ListObjectsV2"] == 1, calls
    row = records.get_documents(engine, [document_id("kb", "volcano.txt")])[document_id("kb", "volcano.txt")]
    assert row.change_token == raw.head_object(Bucket=s3_bucket, Key="landing/kb/volcano.txt")["ETag"]

    # Unchanged: listed, never read (also without the sensor's digest of the last listing).
    again = detection.detect(engine, source, max_file_bytes=4096)
    assert (again.new, again.changed, again.deleted, again.unchanged) == ([], [], [], len(CORPUS) + 1)
    assert counted.take()["GetObject"] == 0
    assert detection.detect(engine, source, previous_digest=again.listing_digest, max_file_bytes=4096).unchanged == len(CORPUS)
    assert counted.take()["GetObject"] == 0

    # One overwritten, one deleted, one re-uploaded with the same bytes (a new LastModified,
    # the same ETag): one change, one tombstone, nothing read.
    _put(raw, s3_bucket, {"notes/bees.txt": b"Beekeepers smoke the hive before opening it.", "glaciers.txt": CORPUS["glaciers.txt"]})
    raw.delete_object(Bucket=s3_bucket, Key="landing/kb/volcano.txt")
    changed = detection.detect(engine, source, max_file_bytes=4096)
    assert changed.changed == [document_id("kb", "notes/bees.txt")]
    assert changed.deleted == [document_id("kb", "volcano.txt")]
    assert counted.take()["GetObject"] == 0


def test_a_listing_over_several_pages_keeps_every_name_exact(s3_server, s3_bucket):
    """The listing reads pages with its own lean parser (botocore's took 0.2 ms per object):
    every page, every name as uploaded (URL-encoded on the wire), sizes and ETags as S3 says."""
    from concurrent.futures import ThreadPoolExecutor

    raw = s3_server.client()
    odd = ["a & b.txt", "caf\u00e9/r\u00e9sum\u00e9 (final).md", "100% <done>.txt", "plus+sign.txt", "quote's \"x\".txt"]
    names = odd + [f"bulk/{i:04d}.txt" for i in range(1_050)]  # over one page of 1,000
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: raw.put_object(Bucket=s3_bucket, Key=f"landing/kb/{n}", Body=n.encode()), names))
    pages = []
    client = make_client(connect_timeout=2.0, read_timeout=10.0)
    # Counted after our reader: the pages it read are the ones botocore did not.
    client.meta.events.register("before-parse.s3.ListObjectsV2", lambda customized_response_dict, **_: pages.append(
        len(customized_response_dict.get("Contents", ()))))
    listing = S3Source(url=f"s3://{s3_bucket}/landing", client=client).list()
    assert sorted(path for _, path in listing.files) == sorted(names)
    assert len(pages) >= 2 and sum(pages) == len(names)
    stat = listing.files[("kb", odd[1])]
    head = raw.head_object(Bucket=s3_bucket, Key=f"landing/kb/{odd[1]}")
    assert (stat.size, stat.token) == (len(odd[1].encode()), head["ETag"])
    assert abs(stat.mtime_ns / 1e9 - head["LastModified"].timestamp()) < 1  # HEAD says whole seconds


# --- the listing in key ranges (an unchanged tick over 100,000 objects) -----------------------

RANGED = {
    **{f"alpha/{i:03d}.txt": b"a" for i in range(23)},
    **{f"beta/deep/{i:02d}/x.md": b"bb" for i in range(9)},
    "beta/caf\u00e9/r\u00e9sum\u00e9.txt": b"c", "beta/\u65e5\u672c/\u6587\u66f8.txt": b"d", "beta/a+b %20.txt": b"e",
    "gamma/only.txt": b"f", "alpha/sub/": b"", "alpha/.hidden.txt": b"h", "alpha/~lock.txt": b"h",
    "alpha/draft.txt.part": b"h", "alpha/.cache/x.txt": b"h", "gamma/big.txt": b"z" * 100,
}


def _raw_keys(source: S3Source) -> list[str]:
    with s3._SPLITS_LOCK:
        splits = s3._SPLITS.get((source.client.meta.endpoint_url, source.bucket, source.prefix), ())
    return [obj["Key"] for page in source._ranges(splits=splits) for obj in page]


def _same(a, b) -> None:  # noqa: ANN001
    assert (a.files, a.refused, a.problems) == (b.files, b.refused, b.problems)


def test_ranges_list_what_one_sequential_listing_does(s3_server, s3_bucket, monkeypatch):
    """Pages of 7 keys, so 44 objects make ranges: the second listing (ranges from the first)
    is the first, object for object, with one request per range when nothing changed; after
    changes at and around the range ends it is what a fresh sequential listing says."""
    monkeypatch.setattr(s3, "PAGE", 7)
    raw = s3_server.client()
    _put(raw, s3_bucket, RANGED, prefix="landing/")
    raw.put_object(Bucket=s3_bucket, Key="landing/stray.txt", Body=b"x")
    raw.put_object(Bucket=s3_bucket, Key="landing/bad kb!/a.txt", Body=b"x")
    counted = Counted()
    source = S3Source(url=f"s3://{s3_bucket}/landing", client=counted.client)
    first = source.list(max_file_bytes=50)
    n = len(RANGED) + 2
    assert counted.take()["ListObjectsV2"] == -(-n // 7)  # sequentially, in pages of 7
    assert len(first.files) == 23 + 9 + 4 and ("gamma", "big.txt") in first.refused
    assert any("stray.txt" in p for p in first.problems) and any("bad kb!" in p for p in first.problems)
    assert ("beta", "caf\u00e9/r\u00e9sum\u00e9.txt") in first.files and ("beta", "a+b %20.txt") in first.files
    splits = s3._SPLITS[(counted.client.meta.endpoint_url, s3_bucket, "landing/")]
    assert len(splits) == (n - 1) // 7  # every 7th key; none after the last

    second = source.list(max_file_bytes=50)
    _same(second, first)
    assert counted.take()["ListObjectsV2"] == len(splits) + 1  # one per range, nothing read twice

    # Changes at the range ends: a split key deleted, keys just before and after others, one
    # range grown past a page, keys before the first and after the last.
    raw.delete_object(Bucket=s3_bucket, Key=splits[2])
    added = [splits[0] + "0", splits[4][:-1], "landing/aaa/first.txt", "landing/zzz/last.txt",
             *(f"landing/alpha/010.{i:02d}.txt" for i in range(20))]
    for key in added:
        raw.put_object(Bucket=s3_bucket, Key=key, Body=b"new")
    ranged = _raw_keys(source)
    assert ranged == sorted(ranged) and len(ranged) == len(set(ranged)) == n - 1 + len(added)
    changed = source.list(max_file_bytes=50)
    s3._SPLITS.clear()
    _same(changed, S3Source(url=f"s3://{s3_bucket}/landing").list(max_file_bytes=50))
    assert ("alpha", "010.19.txt") in changed.files and ("zzz", "last.txt") in changed.files


def test_objects_added_and_deleted_while_the_ranges_are_listed(s3_server, s3_bucket, monkeypatch):
    """Uploads and deletions landing between the requests of one listing: every object that
    was there throughout is listed exactly once, in key order; the others at most once."""
    monkeypatch.setattr(s3, "PAGE", 5)
    raw = s3_server.client()
    stable = [f"landing/kb/{i:03d}.txt" for i in range(0, 80, 2)]
    doomed = [f"landing/kb/{i:03d}.txt" for i in range(1, 80, 4)]
    for key in stable + doomed:
        raw.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    source = S3Source(url=f"s3://{s3_bucket}/landing", client=make_client(connect_timeout=2.0, read_timeout=10.0))
    source.list()  # the ranges
    born = [f"landing/kb/{i:03d}.txt" for i in range(3, 80, 4)] + ["landing/kb/999.txt", "landing/a.txt"]
    todo = list(zip(doomed, born))
    lock = threading.Lock()

    def meanwhile(**_) -> None:  # noqa: ANN003
        with lock:  # two changes per request: 12 requests, 20 changes
            for gone, new in [todo.pop() for _ in range(min(2, len(todo)))]:
                raw.delete_object(Bucket=s3_bucket, Key=gone)
                raw.put_object(Bucket=s3_bucket, Key=new, Body=b"y")

    source.client.meta.events.register("before-call.s3.ListObjectsV2", meanwhile)
    keys = _raw_keys(source)
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    assert set(stable) <= set(keys) <= set(stable + doomed + born)
    assert not todo  # the changes did land during the listing


def test_a_failing_range_gives_the_same_one_line_errors(s3_server, s3_bucket, monkeypatch):
    monkeypatch.setattr(s3, "PAGE", 3)
    _put(s3_server.client(), s3_bucket, {f"{i}.txt": b"x" for i in range(10)})
    S3Source(url=f"s3://{s3_bucket}/landing").list()
    endpoint = s3_server.endpoint
    assert len(s3._SPLITS[(endpoint, s3_bucket, "landing/")]) == 3
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(SourceMisconfigured, match=r"access refused .*AWS_SECRET_ACCESS_KEY") as refused:
        S3Source(url=f"s3://{s3_bucket}/landing").list()
    assert "\n" not in str(refused.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.SECRET_KEY)
    monkeypatch.setitem(s3._SPLITS, (endpoint, "no-such-bucket-here", "landing/"), ("landing/a", "landing/b"))
    with pytest.raises(SourceMisconfigured, match="bucket 'no-such-bucket-here' does not exist; check RAG_INBOX_URL"):
        S3Source(url="s3://no-such-bucket-here/landing").list()


def test_the_page_reader_reads_what_the_xml_parser_reads(s3_server, s3_bucket):
    """The plain reader against the XML parser on real pages; pages it does not vouch for (an
    entity in a key, an error document or a cut-off body inside a 200) go the parser's way, or
    to botocore's retry as a 500."""
    raw = s3_server.client()
    odd = ["a & b.txt", "caf\u00e9.md", "100% <done>.txt", "plus+sign.txt", "quote's \"x\".txt", "tab\there.txt"]
    _put(raw, s3_bucket, {name: name.encode() for name in odd})
    bodies = []
    client = make_client(connect_timeout=2.0, read_timeout=10.0)
    client.meta.events.register_first("before-parse.s3.ListObjectsV2", lambda response_dict, **_: bodies.append(response_dict["body"]))
    S3Source(url=f"s3://{s3_bucket}/landing", client=client).list()
    [body] = bodies
    plain = s3._read_plain_page(body)
    assert plain is not None and plain == s3._parse_page(body)
    assert len(plain[0]) == len(odd) and b"<Contents>" not in plain[1] and b"<IsTruncated>" in plain[1]

    unencoded = (b'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                 b"<IsTruncated>false</IsTruncated><Contents><Key>a &amp; b.txt</Key><Size>3</Size>"
                 b"<ETag>&quot;e&quot;</ETag><LastModified>2026-12-06T10:00:00.000Z</LastModified></Contents>"
                 b"</ListBucketResult>")
    assert s3._read_plain_page(unencoded) is None
    response, custom = {"status_code": 200, "body": unencoded}, {}
    s3._lean_listing(response, custom, operation_model=client.meta.service_model.operation_model("ListObjectsV2"))
    assert custom["Contents"][0]["Key"] == "a & b.txt" and custom["Contents"][0]["ETag"] == '"e"'
    for broken in (b"<Error><Code>InternalError</Code></Error>", unencoded[:-40]):
        response, custom = {"status_code": 200, "body": broken}, {}
        s3._lean_listing(response, custom, operation_model=client.meta.service_model.operation_model("ListObjectsV2"))
        assert response["status_code"] == 500 and not custom


def test_an_object_is_downloaded_once_and_its_hash_becomes_its_version(rig, s3_server, s3_bucket):
    raw = s3_server.client()
    counted = Counted()
    source = S3Source(url=f"s3://{s3_bucket}/landing", client=counted.client)
    files = {"a.txt": b"Otters hold hands while they sleep on the water. " * 20, "b.txt": b"Puffins nest in burrows. " * 20}
    _put(raw, s3_bucket, files)
    ids = {document_id("kb", rel): data for rel, data in files.items()}
    assert sorted(detection.detect(rig.engine, source).new) == sorted(ids)
    assert counted.take()["GetObject"] == 0
    listed = records.get_documents(rig.engine, list(ids))
    assert all(r.version.startswith(records.LISTED_PREFIX) for r in listed.values())

    extracted = pipeline.extract(rig.engine, source, list(ids), config=rig.config, limits=Limits()).outcomes
    assert counted.take()["GetObject"] == len(files)  # the run's read is the only one
    assert {o.document_id: o.version for o in extracted} == {d: hashlib.sha256(b).hexdigest() for d, b in ids.items()}
    rig.chunk(list(ids))
    assert {o.document_id: o.status for o in rig.embed(list(ids))} == dict.fromkeys(ids, "processed")
    requests = rig.server.requests

    # The same bytes again as a multipart upload: another ETag, the same content. The run's
    # read finds the version already indexed: no rebuild, no embedding call.
    a = document_id("kb", "a.txt")
    key = "landing/kb/a.txt"
    before = raw.head_object(Bucket=s3_bucket, Key=key)["ETag"]
    upload = raw.create_multipart_upload(Bucket=s3_bucket, Key=key)["UploadId"]
    part = raw.upload_part(Bucket=s3_bucket, Key=key, PartNumber=1, UploadId=upload, Body=files["a.txt"])
    raw.complete_multipart_upload(Bucket=s3_bucket, Key=key, UploadId=upload,
                                  MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    assert raw.head_object(Bucket=s3_bucket, Key=key)["ETag"] != before
    assert detection.detect(rig.engine, source).changed == [a]
    assert counted.take()["GetObject"] == 0
    [again] = pipeline.extract(rig.engine, source, [a], config=rig.config, limits=Limits()).outcomes
    assert (again.status, again.version) == ("skipped", hashlib.sha256(files["a.txt"]).hexdigest())
    row = records.get_documents(rig.engine, [a])[a]
    assert (row.status, row.version, row.error) == (records.INDEXED, row.indexed_version, None)
    assert rig.server.requests == requests
    assert detection.detect(rig.engine, source).unchanged == len(files)


def test_the_run_reads_only_the_registered_version(s3_server, s3_bucket, pg_url):
    raw = s3_server.client()
    _put(raw, s3_bucket, {"a.txt": b"The first version of the note.", "b.txt": b"A note deleted before its run."})
    source = S3Source(url=f"s3://{s3_bucket}/landing")
    engine = open_engine(pg_url)
    detection.detect(engine, source)
    a, b = document_id("kb", "a.txt"), document_id("kb", "b.txt")
    registered = records.get_documents(engine, [a])[a].version

    # Overwritten between the listing and the run's read; the other deleted.
    _put(raw, s3_bucket, {"a.txt": b"A newer upload that the sensor has not listed yet."})
    raw.delete_object(Bucket=s3_bucket, Key="landing/kb/b.txt")
    step = pipeline.extract(engine, source, [a, b], config="cfg", limits=Limits(parse_timeout_seconds=0))
    outcomes = {o.document_id: o for o in step.outcomes}
    assert outcomes[a].status == "superseded" and outcomes[a].version == registered
    assert outcomes[b].status == "missing"  # a deletion, not a failure
    assert records.get_documents(engine, [b])[b].status == records.PENDING
    assert records.load_sections(engine, [(a, registered)]) == {}  # nothing stored under the old version

    # The next listing registers the new bytes, and the run takes them.
    assert detection.detect(engine, source).changed == [a]
    [again] = pipeline.extract(engine, source, [a], config="cfg", limits=Limits(parse_timeout_seconds=0)).outcomes
    assert again.status == "processed" and again.metrics["source"] == f"s3://{s3_bucket}/landing/"
    [(sections, _)] = records.load_sections(engine, [(a, again.version)]).values()
    assert "newer upload" in sections[0]["text"]


def test_wrong_credentials_and_missing_bucket_are_one_clear_error(s3_server, s3_bucket, pg_url, monkeypatch):
    engine = open_engine(pg_url)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(SourceMisconfigured, match="AWS_SECRET_ACCESS_KEY"):
        detection.detect(engine, S3Source(url=f"s3://{s3_bucket}/landing"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.SECRET_KEY)
    with pytest.raises(SourceMisconfigured, match="does not exist; check RAG_INBOX_URL"):
        detection.detect(engine, S3Source(url="s3://no-such-bucket-here/landing"))
    with pytest.raises(SourceMisconfigured, match="does not exist; check RAG_INBOX_URL"):
        S3Source(url="s3://no-such-bucket-here/landing").probe()
    S3Source(url=f"s3://{s3_bucket}/landing").probe()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(SourceUnavailable, match="AWS_ENDPOINT_URL"):
        detection.detect(engine, S3Source(url=f"s3://{s3_bucket}/landing"))
    assert records.known_documents(engine) == {}


def cli(*args: str, check: bool = True) -> tuple[int, object, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "rag_pipeline.cli", *args, "--json"],
        capture_output=True, text=True, env=dict(os.environ), timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


# Slow tier: each CLI verb is a process of its own (as README's CLI test in the slow tier).
@pytest.mark.slow
def test_cli_from_the_bucket(rag_env, s3_server, s3_bucket, embedding_server, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("RAG_INBOX_URL", f"s3://{s3_bucket}/landing")
    raw = s3_server.client()
    _put(raw, s3_bucket, CORPUS)
    _, summary, _ = cli("run")
    assert summary["indexed"] == len(CORPUS) and summary["failed"] == 0 and summary["pending"] == 0
    _, hits, _ = cli("search", "honey from hives", "--kb", "kb", "-k", "1")
    assert hits[0]["path"] == "notes/bees.txt"
    # No landing directory was involved.
    assert not (Path(rag_env["RAG_DATA_DIR"]) / "inbox").exists()

    # Overwrite two, delete one: the next run reflects exactly that, and only the new texts
    # reach the embedding endpoint.
    texts_before = Counter(embedding_server.texts)
    new_bees = b"Beekeepers wear veils and smoke the hive before opening it."
    new_maps = b"# Maps\n\nPortolan charts showed compass lines between harbours."
    _put(raw, s3_bucket, {"notes/bees.txt": new_bees, "maps/old.md": new_maps})
    raw.delete_object(Bucket=s3_bucket, Key="landing/kb/volcano.txt")
    _, again, _ = cli("run")
    assert (again["changed"], again["deleted"], again["new"]) == (2, 1, 0)
    _, status, _ = cli("status")
    assert status["totals"] == {"indexed": len(CORPUS) - 1}
    sent = Counter(embedding_server.texts) - texts_before
    assert sent and all(("veils" in t or "Portolan" in t) for t in sent), sent
    _, hits, _ = cli("search", "volcano magma", "--kb", "kb", "-k", "5")
    assert "volcano.txt" not in {h["path"] for h in hits}
    _, hits, _ = cli("search", "portolan compass harbours", "--kb", "kb", "-k", "1")
    assert hits[0]["path"] == "maps/old.md" and "Portolan" in hits[0]["text"]

    # `ingest` uploads to the bucket (multipart past 8 MB: an ETag with a part count).
    big = tmp_path / "up" / "big.txt"
    big.parent.mkdir()
    big.write_bytes(b"Seismographs record the waves of distant earthquakes.\n" * 200_000)
    (tmp_path / "up" / "small.txt").write_bytes(b"Tides follow the moon.")
    _, ingested, _ = cli("ingest", str(tmp_path / "up"), "--kb", "uploads")
    assert {d["path"] for d in ingested} == {"big.txt", "small.txt"}
    head = raw.head_object(Bucket=s3_bucket, Key="landing/uploads/big.txt")
    assert head["ContentLength"] == big.stat().st_size and "-" in head["ETag"]

    # A wrong secret: one line naming the setting, no traceback, nothing touched.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    code, _, stderr = cli("run", check=False)
    assert code == 2 and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and "AWS_SECRET_ACCESS_KEY" in stderr, stderr
    # `status` still lists the documents, and says on one line why new uploads are not seen.
    code, status, stderr = cli("status", check=False)
    assert code == 2 and status["totals"] == {"indexed": len(CORPUS) - 1}
    assert "AWS_SECRET_ACCESS_KEY" in status["landing_zone"]["error"]
    assert len(stderr.strip().splitlines()) == 1 and "AWS_SECRET_ACCESS_KEY" in stderr, stderr
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.SECRET_KEY)
    _, status, _ = cli("status")
    assert status["totals"] == {"indexed": len(CORPUS) - 1}
    assert status["landing_zone"] == {"source": f"s3://{s3_bucket}/landing/", "error": None}


def _metadata(instance, doc_id: str, asset: str) -> dict:  # noqa: ANN001
    from dagster import AssetKey, AssetRecordsFilter

    [record] = instance.fetch_materializations(
        AssetRecordsFilter(AssetKey(asset), asset_partitions=[doc_id]), limit=1
    ).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_sensor_and_runs_name_the_bucket(rag_env, s3_server, s3_bucket, monkeypatch):
    import logging

    from dagster import DagsterInstance

    from rag_pipeline.definitions import build_definitions
    from rag_pipeline.settings import Settings
    from rag_pipeline_tests.helpers import tick_and_run

    monkeypatch.setenv("RAG_INBOX_URL", f"s3://{s3_bucket}/landing")
    _put(s3_server.client(), s3_bucket, CORPUS)
    settings = Settings.from_env()
    defs = build_definitions(settings)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    with DagsterInstance.get() as instance:
        result, runs = tick_and_run(defs, instance, log_handler=handler)
        assert runs and all(r.success for r in runs)
        where = f"s3://{s3_bucket}/landing/"
        assert any(line.startswith(f"{where}: {len(CORPUS)} new") for line in lines), lines
        assert _metadata(instance, "kb/notes/bees.txt", "source_document")["source"] == where
        idle, _ = tick_and_run(defs, instance, cursor=result.cursor)
        assert idle.skip_reason.skip_message.startswith(f"no changes in {where}")
        assert " objects unchanged" in idle.skip_reason.skip_message

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        refused, runs = tick_and_run(build_definitions(Settings.from_env()), instance, cursor=result.cursor)
        message = refused.skip_reason.skip_message
        assert not runs and "access refused" in message and "AWS_SECRET_ACCESS_KEY" in message
        assert "\n" not in message


def test_storage_down_mid_run_leaves_documents_waiting_then_indexed(rag_env, tmp_path: Path, monkeypatch):
    """The S3 server stops after the tick registered the uploads and before the run reads them:
    the run fails, its documents wait (attempt refunded), none fails; once the server is back,
    the next run indexes them all."""
    from dagster import DagsterInstance

    from rag_pipeline.definitions import build_definitions
    from rag_pipeline.pipeline_runner import run_pending
    from rag_pipeline.settings import Settings
    from rag_pipeline.devtools.s3_server import S3Server
    from rag_pipeline_tests.helpers import execute

    server = S3Server(tmp_path / "s3")
    server.start()
    try:
        server.client().create_bucket(Bucket="outage")
        for key, value in {
            "AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": server.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": server.SECRET_KEY, "AWS_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2",
            "RAG_S3_CONNECT_TIMEOUT_SECONDS": "1", "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "RAG_INBOX_URL": "s3://outage/landing",
        }.items():
            monkeypatch.setenv(key, value)
        _put(server.client(), "outage", CORPUS)
        settings = Settings.from_env()
        defs = build_definitions(settings)
        engine = open_engine(settings.database_url)
        with DagsterInstance.get() as instance:
            sensor = defs.resolve_sensor_def("inbox_sensor")
            from dagster import build_sensor_context

            with build_sensor_context(instance=instance, resources=defs.resources) as ctx:
                tick = sensor(ctx)
            assert tick.run_requests
            server.stop()
            for request in tick.run_requests:
                assert not execute(defs, instance, request, expect_success=False).success
            rows = records.list_documents(engine)
            assert {r.status for r in rows} == {records.PENDING}
            assert all(r.error.startswith("waiting: SourceUnavailable") and r.attempts == 0 for r in rows), rows

            # While it is down, `run` says so in one line; the tick skips with the same line.
            with build_sensor_context(instance=instance, resources=defs.resources, cursor=None) as ctx:
                down = sensor(ctx)
            assert "unreachable" in down.skip_reason.skip_message and "AWS_ENDPOINT_URL" in down.skip_reason.skip_message
            assert {r.status for r in records.list_documents(engine)} == {records.PENDING}  # nothing tombstoned

            server.start()
            summary = run_pending(settings)
            assert summary["indexed"] == len(CORPUS) and summary["failed"] == 0 and summary["pending"] == 0
    finally:
        server.stop()
