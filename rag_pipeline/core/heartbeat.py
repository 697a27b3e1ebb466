"""Run worker heartbeats: a thread in the run's process stamps a row every few seconds.

Dagster's default launcher cannot tell that a run's process died, so the run would stay
STARTED until its maximum runtime. A stale heartbeat is that signal, and it works wherever the
worker runs (another container or machine), which checking a pid would not.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rag_pipeline.core.db import run_heartbeats
from rag_pipeline.core.records import insert_for, now, seconds_since

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0


class Heartbeat:
    """Beats for `run_id` from start() until stop(); stop() records a clean finish."""

    def __init__(self, engine: Engine, run_id: str, interval: float = INTERVAL_SECONDS) -> None:
        self.engine = engine
        self.run_id = run_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Heartbeat":
        ts = now()
        values = dict(host=socket.gethostname()[:255], pid=os.getpid(), started_at=ts, beat_at=ts, finished_at=None)
        with self.engine.begin() as conn:
            # A resumed or re-executed run in the same id takes the row over.
            conn.execute(
                insert_for(conn, run_heartbeats).values(run_id=self.run_id, **values)
                .on_conflict_do_update(index_elements=["run_id"], set_=values)
            )
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.run_id[:8]}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        run_heartbeats.update().where(run_heartbeats.c.run_id == self.run_id).values(beat_at=now())
                    )
            except Exception:  # a database blip must not kill the run; the next beat retries
                log.warning("heartbeat for run %s failed", self.run_id, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    run_heartbeats.update().where(run_heartbeats.c.run_id == self.run_id).values(finished_at=now())
                )
        except Exception:  # the run's own error (maybe the database) matters more than this note
            log.warning("could not record the end of run %s", self.run_id, exc_info=True)


@dataclass(frozen=True)
class Beat:
    host: str
    pid: int
    started_at: dt.datetime
    beat_at: dt.datetime
    finished_at: dt.datetime | None

    def age(self) -> float:
        return seconds_since(self.beat_at)


def last_beat(engine: Engine, run_id: str) -> Beat | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(
                run_heartbeats.c.host, run_heartbeats.c.pid, run_heartbeats.c.started_at,
                run_heartbeats.c.beat_at, run_heartbeats.c.finished_at,
            ).where(run_heartbeats.c.run_id == run_id)
        ).one_or_none()
    return Beat(*row) if row else None
