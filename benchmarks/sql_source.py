"""Database records as a source: registering N rows and an unchanged tick, with and without
`updated_at` (issue 16's "a tick over 100,000 unchanged rows stays under 2 s").

    python benchmarks/sql_source.py                 # 100,000 rows
    python benchmarks/sql_source.py --rows 5000     # quicker

Each variant gets its own fresh databases (the source table, and our tables) on --pg, dropped
at the end; the tick is `detection.detect`, what the source's sensor runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import fresh_database  # noqa: E402

from rag_pipeline.core import detection  # noqa: E402
from rag_pipeline.core.db import open_engine  # noqa: E402
from rag_pipeline.core.sources import catalog  # noqa: E402
from rag_pipeline.core.sources.sql import SqlSource  # noqa: E402


def measure(admin: str, rows: int, incremental: bool) -> dict:
    tag = f"{'inc' if incremental else 'full'}_{os.getpid()}"
    src_url, our_url = fresh_database(admin, f"rag_sqlbench_src_{tag}"), fresh_database(admin, f"rag_sqlbench_ours_{tag}")
    try:
        with psycopg.connect(src_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE tickets (id bigint PRIMARY KEY, project text, status text, title text, "
                         "body text, updated_at timestamptz)")
            conn.execute("INSERT INTO tickets SELECT i, 'P' || (i %% 20), 'open', 'Ticket ' || i, 'Body of ticket ' "
                         "|| i || ' about widgets and gears', now() - (i || ' seconds')::interval "
                         "FROM generate_series(1, %s) i", (rows,))
        spec = Path(tempfile.mkdtemp()) / "sources.yml"
        spec.write_text(
            f"sources:\n  - name: tickets\n    kind: sql\n    url: {src_url}\n    table: tickets\n    id: id\n"
            "    knowledge_base: support\n    text: [title, body]\n    metadata: [project, status]\n"
            + ("    updated_at: updated_at\n" if incremental else "")
        )
        source = SqlSource(catalog.load(spec).sql[0])
        engine = open_engine(our_url)
        started = time.perf_counter()
        first = detection.detect(engine, source)
        register = time.perf_counter() - started
        ticks, sensor_ticks, digest = [], [], ""
        for _ in range(3):
            # As `run` and a first tick do: compare the listing with our registry.
            started = time.perf_counter()
            again = detection.detect(engine, source)
            ticks.append(time.perf_counter() - started)
            assert not (again.new or again.changed or again.deleted)
            digest = again.listing_digest
        for _ in range(3):
            # As the sensor's later ticks do: the listing's digest matches the cursor's.
            started = time.perf_counter()
            same = detection.detect(engine, source, previous_digest=digest)
            sensor_ticks.append(time.perf_counter() - started)
        source.close()
        engine.dispose()
        return {"registered": len(first.new), "register_seconds": register, "tick_min": min(ticks),
                "tick_max": max(ticks), "phases": {k: round(v, 2) for k, v in again.seconds.items()},
                "sensor_tick_min": min(sensor_ticks), "sensor_tick_max": max(sensor_ticks),
                "sensor_unchanged": same.unchanged}
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for url in (src_url, our_url):
                conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pg", default=os.environ.get("RAG_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    for incremental in (True, False):
        r = measure(args.pg, args.rows, incremental)
        print(f"{'updated_at' if incremental else 'full read'}: registered {r['registered']} rows in "
              f"{r['register_seconds']:.1f} s; unchanged tick {r['tick_min']:.2f} s (max {r['tick_max']:.2f} s); "
              f"phases {r['phases']}; the sensor's tick (listing digest unchanged) {r['sensor_tick_min']:.2f} s "
              f"(max {r['sensor_tick_max']:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
