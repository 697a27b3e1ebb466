"""`rag-dagster-daemon`: dagster-daemon, with the sensor loop every RAG_SENSOR_LOOP_SECONDS.

dagster-daemon looks for due sensors once every 5 s, a constant it offers no setting for
(`dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME`, set in defs/dagster_internals.py). With the inbox's 1 s settling time that
loop alone kept an upload waiting 1 to 6 s for its tick: measured at 5,000 documents, the run
for one modified document was queued 4.8 s after the write, of the 10.7 s until it was
searchable. The sensor still ticks at most every `minimum_interval_seconds`
(RAG_SENSOR_INTERVAL_SECONDS); a loop twice as fast as that finds it due every time.

Everything else is dagster-daemon's own command line: `rag-dagster-daemon run -w workspace.yaml`.
Plain `dagster-daemon run` works too, with Dagster's 5 s loop.
"""

from __future__ import annotations

import sys
from typing import Mapping

def loop_seconds(env: Mapping[str, str] | None = None) -> float:
    """RAG_SENSOR_LOOP_SECONDS (rag_pipeline.settings), from the process environment or `env`;
    a bad value raises SettingsError."""
    from rag_pipeline.settings import Settings

    return Settings.from_env(env).sensor_loop_seconds


def main() -> None:
    from rag_pipeline.settings import SettingsError

    try:
        seconds = loop_seconds()
    except SettingsError as exc:
        raise SystemExit(f"rag-dagster-daemon: {exc}") from None
    from rag_pipeline.defs import dagster_internals

    if not dagster_internals.set_sensor_loop(seconds):
        print("rag-dagster-daemon: this Dagster has no MIN_INTERVAL_LOOP_TIME; using its own sensor loop", file=sys.stderr)
    dagster_internals.run_dagster_daemon()


if __name__ == "__main__":
    main()
