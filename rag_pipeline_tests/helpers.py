"""Test helpers: write uploads of each format and drive the sensor and its runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import pytest

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    ExecuteInProcessResult,
    SensorResult,
    build_sensor_context,
)

from rag_pipeline import embedded_pg
from rag_pipeline.devtools.pdf import text_pdf

FORMAT_FILES = {
    "notes/gardening.txt": b"Tomatoes need full sun and deep watering twice a week.\n\nPrune suckers for bigger fruit.",
    "guides/astronomy.md": b"# Astronomy\n\n## Telescopes\n\nA refractor telescope uses lenses; a reflector uses mirrors.\n",
    "web/cooking.html": b"<html><head><title>Bread</title></head><body><h1>Sourdough</h1><p>Feed the starter with flour and water daily.</p><script>var x=1;</script></body></html>",
    "papers/geology.pdf": text_pdf(["Basalt is an igneous rock formed from rapid cooling of lava.", "Granite cools slowly underground."]),
}


@pytest.fixture
def embedded_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data folder for tests on the default database (no DATABASE_URL): the PostgreSQL
    server a test starts in it is stopped at the end, so no process outlives the test."""
    yield tmp_path
    embedded_pg.stop(data_dir=tmp_path)
    assert embedded_pg.running_pid(data_dir=tmp_path) is None
    remove_socket_link(tmp_path)


def remove_socket_link(data_dir: Path) -> None:
    """A data folder whose path is too long for a socket address is reached through a link in
    the temporary folder: it goes with the test."""
    link = embedded_pg.socket_dir(data_dir)
    if link.is_symlink():
        link.unlink()


def write_files(inbox: Path, kb: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        target = inbox / kb / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def tick_and_run(
    defs, instance: DagsterInstance, cursor: str | None = None, log_handler: logging.Handler | None = None  # noqa: ANN001
) -> tuple[SensorResult | object, list]:
    """One sensor evaluation and its runs executed in process."""
    sensor = defs.resolve_sensor_def("inbox_sensor")
    with build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor) as ctx:
        if log_handler is not None:
            ctx.log.addHandler(log_handler)
        result = sensor(ctx)
    runs = []
    if isinstance(result, SensorResult):
        # The sensor changes the partitions itself, inside the tick (before any run request).
        runs = [execute(defs, instance, r) for r in result.run_requests or []]
    return result, runs


def execute(defs, instance: DagsterInstance, request, expect_success: bool = True) -> ExecuteInProcessResult:  # noqa: ANN001
    """A run request executed here, as the daemon would launch it (same job, same tags)."""
    job = defs.resolve_job_def(request.job_name)
    outcome = job.execute_in_process(instance=instance, tags=dict(request.tags), raise_on_error=False)
    if expect_success:
        assert_run_succeeded(outcome)
    return outcome


def _error_text(error) -> str:  # noqa: ANN001  (a SerializableErrorInfo)
    """An error's message and those of its causes (a step's own exception is often the cause
    of Dagster's "Error occurred while executing op ...")."""
    parts = []
    while error is not None and len(parts) < 5:
        parts.append((error.message or error.cls_name or "").strip())
        error = error.cause
    return "\n  caused by: ".join(p for p in parts if p)


def run_errors(events) -> str:  # noqa: ANN001
    """What went wrong in a run, from its events (DagsterEvents or event log entries): each
    failed step's error, else the run's own failure and engine errors."""
    failures, others = [], []
    for event in events:
        event = getattr(event, "dagster_event", event)
        if event is None:
            continue
        data = event.event_specific_data
        error = getattr(data, "error", None)
        if event.event_type == DagsterEventType.STEP_FAILURE:
            failures.append(f"step {event.step_key} failed: {_error_text(error) if error else event.message}")
        elif event.event_type == DagsterEventType.RUN_FAILURE or (event.event_type == DagsterEventType.ENGINE_EVENT and error):
            others.append(f"{event.event_type.value}: {event.message or ''} {_error_text(error) if error else ''}".strip())
    return "\n".join(failures or others) or "no failure event recorded"


def assert_run_succeeded(run: ExecuteInProcessResult | DagsterRun, instance: DagsterInstance | None = None) -> None:
    """Assert a run succeeded; if not, the message carries its steps' error messages. `run`: an
    in-process result, or a DagsterRun with the `instance` whose event log holds its events."""
    if isinstance(run, ExecuteInProcessResult):
        dagster_run, events = run.dagster_run, run.all_events
    else:
        dagster_run = run
        events = instance.all_logs(run.run_id) if instance is not None else []
    assert dagster_run.status == DagsterRunStatus.SUCCESS, (
        f"run {dagster_run.run_id} ended {dagster_run.status.value}:\n{run_errors(events)}"
    )
