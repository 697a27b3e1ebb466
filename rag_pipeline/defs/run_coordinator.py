"""Dagster's run queue (QueuedRunCoordinator), looked at every half second instead of every second.

`dequeue_interval_seconds` is a whole number of seconds in Dagster's own coordinator: a run
queued just after the dequeuer looked waited up to a second (measured at 2,000 documents: the
run for one modified document launched 0.2-0.9 s after it was queued, of 4.2 s from the write
to searchable). Here it takes a fraction. The daemon's wait between two looks is sliced in
0.5 s (`dagster._daemon.daemon.IntervalDaemon`), so 0.5 is the shortest interval that differs.
A look costs the daemon two queries of the runs table.
"""

from __future__ import annotations

from typing import Any, Mapping

from dagster import Field, QueuedRunCoordinator

from rag_pipeline.defs.dagster_internals import ConfigurableClassData

DEFAULT_INTERVAL = 0.5


class PromptRunCoordinator(QueuedRunCoordinator):
    _interval: float = DEFAULT_INTERVAL

    @classmethod
    def config_type(cls) -> dict:
        return {
            **super().config_type(),
            "dequeue_interval_seconds": Field(
                float, is_required=False, default_value=DEFAULT_INTERVAL,
                description="How often the daemon looks for queued runs to launch, in seconds (fractions "
                "allowed; 0.5 is the shortest that differs).",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> "PromptRunCoordinator":
        rest = {k: v for k, v in config_value.items() if k != "dequeue_interval_seconds"}
        interval = float(config_value.get("dequeue_interval_seconds", DEFAULT_INTERVAL))
        if not interval > 0:
            raise ValueError(f"run_coordinator dequeue_interval_seconds must be above 0, got {interval:g}")
        coordinator = super().from_config_value(inst_data, rest)
        coordinator._interval = interval
        return coordinator

    @property
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]  # Dagster's is an int
        return self._interval
