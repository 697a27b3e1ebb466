"""A run whose step waits for a pool slot sleeps; it does not spin on a core.

The scenario from the 5,000-document benchmark: one run holds the vector-store pool's only slot
while others reach their vector-store step. Dagster's in-process executor re-tried the claim in
a loop without sleeping (see rag_pipeline/defs/pool_wait.py), so each waiting run burned a
core the writer needed.
"""

from __future__ import annotations

import threading
import time

from dagster import DagsterInstance, job, op

import rag_pipeline.defs  # noqa: F401  (installs the fix, as the definitions do in a run process)
from rag_pipeline.devtools.topology import production_home

POOL = "test_single_writer"


@op(pool=POOL)
def write_once() -> int:
    return 1


@job
def one_pooled_step():
    write_once()


def test_waiting_for_a_pool_slot_sleeps_and_takes_the_slot_when_freed(tmp_path, pg_url, monkeypatch):
    for key, value in production_home(tmp_path / "home", pg_url).items():
        monkeypatch.setenv(key, value)
    with DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(POOL, 1)
        assert storage.claim_concurrency_slot(POOL, "other-run", "other-step").is_claimed
        outcome: dict = {}

        def execute() -> None:
            outcome["result"] = one_pooled_step.execute_in_process(instance=instance)
            outcome["finished"] = time.monotonic()

        runner = threading.Thread(target=execute)
        cpu_before = time.process_time()
        runner.start()
        time.sleep(4)
        cpu_waiting = time.process_time() - cpu_before
        assert runner.is_alive(), "the step ran although the pool's only slot was taken"
        freed = time.monotonic()
        storage.free_concurrency_slot_for_step("other-run", "other-step")
        runner.join(30)
        assert not runner.is_alive()

    assert outcome["result"].success
    # Spinning costs ~4 s of CPU in these 4 s; sleeping between claims, a small fraction
    # (starting the run included).
    assert cpu_waiting < 1.5, f"{cpu_waiting:.2f} s of CPU while waiting for a slot"
    # Re-tried every claim_recheck_seconds (0.5), not on Dagster's back-off towards 15 s.
    assert outcome["finished"] - freed < 3


def test_a_second_writer_waits_for_the_embedded_folder_and_gets_it_when_released(tmp_path):
    """Embedded Qdrant admits one process per folder; the writing steps take turns on it (each
    releases it as soon as its Qdrant work is done), sleeping while they wait."""
    from qdrant_client import QdrantClient

    from rag_pipeline.core.vectorstore import open_client

    holder = QdrantClient(path=str(tmp_path / "qdrant"))
    got: dict = {}

    def second_writer() -> None:
        got["client"] = open_client(None, tmp_path / "qdrant")
        got["at"] = time.monotonic()

    waiter = threading.Thread(target=second_writer)
    cpu_before = time.process_time()
    waiter.start()
    time.sleep(2)
    cpu_waiting = time.process_time() - cpu_before
    assert waiter.is_alive() and "client" not in got
    released = time.monotonic()
    holder.close()
    waiter.join(10)
    assert got["client"].get_collections() is not None
    assert got["at"] - released < 1
    assert cpu_waiting < 0.5, f"{cpu_waiting:.2f} s of CPU while waiting for the folder"
    got["client"].close()
