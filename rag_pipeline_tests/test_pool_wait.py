"""A run whose step waits for a pool slot sleeps; it does not spin on a core.

The scenario from the 5,000-document benchmark: one run holds the vector-store pool's only slot
while others reach their vector-store step. Dagster's in-process executor re-tried the claim in
a loop without sleeping (see rag_pipeline/defs/dagster_internals.py), so each waiting run burned a
core the writer needed.
"""

from __future__ import annotations

import threading
import time

import pytest

from dagster import DagsterInstance, job, op

from rag_pipeline.defs import tuning
from rag_pipeline.devtools.topology import production_home
from rag_pipeline_tests.helpers import assert_run_succeeded

POOL = "test_single_writer"


@op(pool=POOL)
def write_once() -> int:
    return 1


@job
def one_pooled_step():
    write_once()


def wait_then_release(work, seconds: float, release) -> dict:  # noqa: ANN001
    """Run `work()` in a thread that must block; after `seconds`, call `release()`. Returns the
    process's CPU seconds while it blocked, how long after the release `work` returned, and
    its result."""
    out: dict = {}

    def run() -> None:
        out["result"] = work()
        out["returned"] = time.monotonic()

    # A daemon: a thread left blocked by a failed assertion must not keep the worker alive.
    thread = threading.Thread(target=run, daemon=True)
    cpu_before = time.process_time()
    thread.start()
    time.sleep(seconds)
    out["cpu_waiting"] = time.process_time() - cpu_before
    assert thread.is_alive() and "result" not in out, "did not wait although the resource was taken"
    released = time.monotonic()
    release()
    thread.join(30)
    assert not thread.is_alive()
    out["after_release"] = out["returned"] - released
    return out


# Slow tier, where tests run one at a time: it measures CPU seconds and how soon the freed slot
# is taken, and beside three other workers on 2 cores the waiting run (which alone finishes
# 16 s after it starts) did not even finish within 30 s of the release: starved, not stuck.
@pytest.mark.slow
def test_waiting_for_a_pool_slot_sleeps_and_takes_the_slot_when_freed(tmp_path, pg_url, monkeypatch):
    tuning.install()  # as the definitions do in a run process (nothing is installed on import)
    for key, value in production_home(tmp_path / "home", pg_url).items():
        monkeypatch.setenv(key, value)
    with DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(POOL, 1)
        assert storage.claim_concurrency_slot(POOL, "other-run", "other-step").is_claimed
        # A blocked claim is re-tried every claim_recheck_seconds, not on Dagster's back-off
        # from 1 s towards 15 s (which a 4 s wait would not tell apart).
        blocked = storage.claim_concurrency_slot(POOL, "probe-run", "probe-step")
        assert not blocked.is_claimed and blocked.sleep_interval == 0.5
        storage.free_concurrency_slot_for_step("probe-run", "probe-step")
        waited = wait_then_release(
            lambda: one_pooled_step.execute_in_process(instance=instance), 4,
            lambda: storage.free_concurrency_slot_for_step("other-run", "other-step"),
        )

    assert_run_succeeded(waited["result"])
    # Spinning costs ~4 s of CPU in these 4 s; sleeping between claims, a small fraction
    # (starting the run included).
    assert waited["cpu_waiting"] < 1.5, f"{waited['cpu_waiting']:.2f} s of CPU while waiting for a slot"
    assert waited["after_release"] < 3


def test_a_second_writer_waits_for_the_embedded_folder_and_gets_it_when_released(tmp_path):
    """The embedded store admits one process per folder; the writing steps take turns on it (each
    releases it as soon as its Qdrant work is done), sleeping while they wait."""
    from rag_pipeline.core.qdrant_edge_store import EdgeClient
    from rag_pipeline.core.vectorstore import open_client

    holder = EdgeClient(tmp_path / "vectors")
    waited = wait_then_release(lambda: open_client(None, tmp_path / "vectors"), 2, holder.close)
    client = waited["result"]
    assert client.get_collections() is not None
    # A claim every 0.2 s at most, then opening the folder: well under a second alone, but four
    # xdist workers on 2 cores stretched it past one. The bound tells a prompt claim from a
    # back-off that grows towards the 900 s lock wait.
    assert waited["after_release"] < 5
    assert waited["cpu_waiting"] < 0.5, f"{waited['cpu_waiting']:.2f} s of CPU while waiting for the folder"
    client.close()
