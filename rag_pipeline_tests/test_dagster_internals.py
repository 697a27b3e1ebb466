"""Every use of Dagster's private API is in one module, and an upgrade that changes the upstream
code an override was written against fails here, naming the override to review."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rag_pipeline.defs import dagster_internals
from rag_pipeline.defs.dagster_internals import OVERRIDES, WRITTEN_AGAINST, Override

PACKAGE = Path(dagster_internals.__file__).resolve().parents[1]


def test_no_other_module_imports_dagster_internals():
    private = re.compile(r"^\s*(from|import)\s+dagster\._", re.M)
    offenders = [
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
        if p.name != "dagster_internals.py" and private.search(p.read_text())
    ]
    assert offenders == [], f"import dagster._* through rag_pipeline/defs/dagster_internals.py: {offenders}"


def test_the_upstream_code_of_every_override_is_the_code_it_was_written_against():
    # Installed or not (another test in this worker may have installed it), the check reads
    # upstream's code: CI once compared our replacement's source against upstream's hash.
    dagster_internals.install_pool_wait()
    assert dagster_internals.pool_wait_installed()
    drifted = dagster_internals.drifted()
    assert drifted == [], "\n".join(
        f"{o.target} changed since Dagster {WRITTEN_AGAINST} (sha256 now {h}): review {o.ours} "
        f"(it buys: {o.gain}), then record the new hash in OVERRIDES" for o, h in drifted
    )


def test_a_changed_or_missing_upstream_is_reported():
    real = OVERRIDES[0]
    changed = Override(real.target, "0" * 64, real.ours, real.gain)
    gone = Override("dagster._core.utils:no_such_function", "0" * 64, "nothing", "nothing")
    assert changed.current_sha256() == real.sha256 != changed.sha256
    assert gone.current_sha256() is None


@pytest.mark.parametrize("override", OVERRIDES, ids=lambda o: o.target.rsplit(":", 1)[1])
def test_every_override_says_what_it_buys_and_where_it_lives(override):
    assert re.fullmatch(r"[0-9a-f]{64}", override.sha256)
    assert override.gain and override.ours


def test_metadata_added_by_partition_at_once_is_what_dagsters_calls_give(monkeypatch):
    """Each partition of a range gets the same materialization metadata as with Dagster's own
    `add_asset_metadata` per partition (merged with the step's, and with an earlier call's);
    a key outside the step's range is refused, as Dagster refuses it."""
    from dagster import (
        AssetKey, BackfillPolicy, DagsterInstance, MaterializeResult, StaticPartitionsDefinition, asset, materialize,
    )
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    parts = StaticPartitionsDefinition(["a", "b", "c", "d"])
    wanted = {"a": {"n": 1, "path": "kb/a.txt"}, "b": {"n": 2}, "c": {"n": 3, "status": "failed"}}
    refused: list[str] = []

    def body(context, add):  # noqa: ANN001, ANN202
        context.add_asset_metadata({"early": "yes"}, partition_key="a")
        add(context)
        try:
            dagster_internals.add_metadata_by_partition(context, context.asset_key, {"d": {"n": 4}},
                                                       step_keys=context.partition_keys)
        except ValueError as exc:
            refused.append(str(exc))
        return MaterializeResult(metadata={"step": 7})

    @asset(partitions_def=parts, backfill_policy=BackfillPolicy.single_run())
    def theirs(context):  # noqa: ANN001, ANN202
        return body(context, lambda c: [c.add_asset_metadata(m, partition_key=k) for k, m in wanted.items()])

    @asset(partitions_def=parts, backfill_policy=BackfillPolicy.single_run())
    def ours(context):  # noqa: ANN001, ANN202
        return body(context, lambda c: dagster_internals.add_metadata_by_partition(
            c, c.asset_key, wanted, step_keys=c.partition_keys))

    @asset(partitions_def=parts, backfill_policy=BackfillPolicy.single_run())
    def fallback(context):  # noqa: ANN001, ANN202
        # A Dagster whose step context no longer holds this accumulator: the public calls instead.
        def add(c):  # noqa: ANN001, ANN202
            with monkeypatch.context() as patched:
                patched.setattr(dagster_internals, "OutputMetadataAccumulator", type("Changed", (), {}))
                dagster_internals.add_metadata_by_partition(c, c.asset_key, wanted, step_keys=c.partition_keys)
        return body(context, add)

    with DagsterInstance.ephemeral() as instance:
        tags = {ASSET_PARTITION_RANGE_START_TAG: "a", ASSET_PARTITION_RANGE_END_TAG: "c"}
        assert materialize([theirs, ours, fallback], instance=instance, tags=tags).success
        metadata = {}
        for name in ("theirs", "ours", "fallback"):
            events = [r.event_log_entry.asset_materialization for r in instance.fetch_materializations(AssetKey(name), limit=10).records]
            metadata[name] = {e.partition: {k: v.value for k, v in e.metadata.items()} for e in events}
    assert metadata["ours"] == metadata["theirs"] == metadata["fallback"]
    assert metadata["ours"]["a"] == {"step": 7, "early": "yes", "n": 1, "path": "kb/a.txt"}
    assert set(metadata["ours"]) == {"a", "b", "c"}
    # The stray key is refused in each of the three steps.
    assert len(refused) == 3 and all("'d'" in r for r in refused)


def test_runs_are_forked_only_by_a_code_server():
    # This process is no `dagster api grpc`: nothing is replaced and no forkserver started.
    from dagster._grpc.server import DagsterApiServer  # noqa: F401  (as a code server has it)

    start_run = DagsterApiServer.StartRun
    assert dagster_internals.fork_runs(preload=("rag_pipeline.defs.run_preload",)) is False
    assert DagsterApiServer.StartRun is start_run


def test_the_run_preload_loads_everything_and_shares_the_tokenizer(tmp_path):
    import subprocess
    import sys

    code = (
        "from rag_pipeline.defs import run_preload\n"
        "from rag_pipeline.core import tokens\n"
        "assert tokens.get_encoding('cl100k_base') is tokens.get_encoding()\n"
        "from rag_pipeline.core import chunking\n"
        "assert chunking.token_lengths.cache_info().currsize == 1  # counted before any run\n"
        "print(run_preload.FAILED, sorted(m for m in run_preload.MODULES if m not in __import__('sys').modules))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] []"
