"""`rag-dagster-daemon`: dagster-daemon, with the sensor loop every RAG_SENSOR_LOOP_SECONDS.

dagster-daemon looks for due sensors once every 5 s, a constant it offers no setting for
(`dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME`). With the inbox's 1 s settling time that
loop alone kept an upload waiting 1 to 6 s for its tick: measured at 5,000 documents, the run
for one modified document was queued 4.8 s after the write, of the 10.7 s until it was
searchable. The sensor still ticks at most every `minimum_interval_seconds`
(RAG_SENSOR_INTERVAL_SECONDS); a loop twice as fast as that finds it due every time.

Everything else is dagster-daemon's own command line: `rag-dagster-daemon run -w workspace.yaml`.
Plain `dagster-daemon run` works too, with Dagster's 5 s loop.
"""

from __future__ import annotations

import os
import sys

DEFAULT_LOOP_SECONDS = 0.5


def loop_seconds(env: dict[str, str] | os._Environ = os.environ) -> float:
    raw = env.get("RAG_SENSOR_LOOP_SECONDS", "")
    if not raw:
        return DEFAULT_LOOP_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 60:
        raise SystemExit(f"RAG_SENSOR_LOOP_SECONDS must be a number of seconds from 0.1 to 60, not {raw!r}")
    return value


def set_sensor_loop(seconds: float) -> bool:
    """False when this Dagster no longer has the constant (the loop is then Dagster's own)."""
    from dagster._daemon import sensor as sensor_daemon

    if not isinstance(getattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME", None), (int, float)):
        return False
    sensor_daemon.MIN_INTERVAL_LOOP_TIME = seconds
    return True


def main() -> None:
    seconds = loop_seconds()
    if not set_sensor_loop(seconds):
        print("rag-dagster-daemon: this Dagster has no MIN_INTERVAL_LOOP_TIME; using its own sensor loop", file=sys.stderr)
    from dagster._daemon.cli import main as dagster_daemon_main

    dagster_daemon_main()


if __name__ == "__main__":
    main()
