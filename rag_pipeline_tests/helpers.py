"""Test helpers: write uploads of each format and drive the sensor and its runs."""

from __future__ import annotations

import logging
from pathlib import Path

from dagster import (
    AddDynamicPartitionsRequest,
    DagsterInstance,
    DagsterRunStatus,
    SensorResult,
    build_sensor_context,
)

from rag_pipeline.devtools.pdf import text_pdf

FORMAT_FILES = {
    "notes/gardening.txt": b"Tomatoes need full sun and deep watering twice a week.\n\nPrune suckers for bigger fruit.",
    "guides/astronomy.md": b"# Astronomy\n\n## Telescopes\n\nA refractor telescope uses lenses; a reflector uses mirrors.\n",
    "web/cooking.html": b"<html><head><title>Bread</title></head><body><h1>Sourdough</h1><p>Feed the starter with flour and water daily.</p><script>var x=1;</script></body></html>",
    "papers/geology.pdf": text_pdf(["Basalt is an igneous rock formed from rapid cooling of lava.", "Granite cools slowly underground."]),
}


def write_files(inbox: Path, kb: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        target = inbox / kb / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def tick_and_run(
    defs, instance: DagsterInstance, cursor: str | None = None, log_handler: logging.Handler | None = None  # noqa: ANN001
) -> tuple[SensorResult | object, list]:
    """One sensor evaluation, its partition requests applied, and its runs executed in process."""
    sensor = defs.resolve_sensor_def("inbox_sensor")
    with build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor) as ctx:
        if log_handler is not None:
            ctx.log.addHandler(log_handler)
        result = sensor(ctx)
    runs = []
    if isinstance(result, SensorResult):
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
        for run_request in result.run_requests or []:
            job = defs.resolve_job_def(run_request.job_name)
            outcome = job.execute_in_process(instance=instance, tags=dict(run_request.tags), raise_on_error=False)
            assert outcome.dagster_run.status == DagsterRunStatus.SUCCESS
            runs.append(outcome)
    return result, runs
