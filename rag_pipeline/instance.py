"""The Dagster instance the CLI uses: $DAGSTER_HOME if set, else one under the data folder.

The instance written here is the documented one in small: run monitoring with the runs'
heartbeats, run retries, run output at INFO. `rag-pipeline ui` serves it with the webserver and
`rag-dagster-daemon` (the sensor loop that makes the sensor's interval the one the UI shows).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterInstance

from rag_pipeline import embedded_pg
from rag_pipeline.settings import Settings

MARKER = "# Written by rag-pipeline"

_EMBEDDED_YAML = """\
# Written by rag-pipeline for this data folder (rewritten when rag-pipeline changes it; remove
# this line to keep your own edits). {storage_note}; otherwise the production
# dagster.yaml in small: run monitoring and retries, runs' output at INFO.
{storage}telemetry:
  enabled: false
run_coordinator:
  module: rag_pipeline.defs.run_coordinator
  class: PromptRunCoordinator
  config:
    # Embedded Qdrant admits one process at a time; with a Qdrant server, raise this.
    max_concurrent_runs: 1
    dequeue_interval_seconds: 0.5
# Worker health from the runs' heartbeats (in our database): a run whose process died is marked
# failed by run monitoring and retried.
run_launcher:
  module: rag_pipeline.defs.run_launcher
  class: HeartbeatRunLauncher
  config:
    database_url: {database_url}
    stale_after_seconds: 30
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  max_runtime_seconds: 7200
  poll_interval_seconds: 10
  max_resume_run_attempts: 0
  free_slots_after_run_end_seconds: 5
run_retries:
  enabled: true
  max_retries: 2
python_logs:
  python_log_level: INFO
"""


# Dagster's storage on the data folder's PostgreSQL server, through the deployed dagster.yaml's
# classes (pooled connections), made to start the server first, since any process (`dagster
# dev`, the daemon, a run worker) may be the first to open this instance. psycopg2, and
# synchronous_commit=off for Dagster's bookkeeping only, as in dagster.yaml.
_PG_STORAGE = """\
run_storage:
  module: rag_pipeline.defs.storage
  class: EmbeddedPostgresRunStorage
  config:
    postgres_url: '{url}'
event_log_storage:
  module: rag_pipeline.defs.storage
  class: PooledPostgresEventLogStorage
  config:
    postgres_url: '{url}'
schedule_storage:
  module: rag_pipeline.defs.storage
  class: EmbeddedPostgresScheduleStorage
  config:
    postgres_url: '{url}'
"""


def instance_yaml(settings: Settings) -> str:
    # A URL from the environment stays there (it may hold a password); the default's URL (a
    # socket folder) and the legacy SQLite file's path hold none.
    url = "{env: DATABASE_URL}" if os.environ.get("DATABASE_URL") else f"'{settings.database_url}'"
    if settings.embedded_database:
        storage_url = embedded_pg.database_url(
            settings.data_dir, scheme="postgresql+psycopg2",
            params="application_name=dagster&options=-c%20synchronous_commit%3Doff",
        )
        note, storage = "Storage on the data folder's PostgreSQL server", _PG_STORAGE.replace("{url}", storage_url)
    else:
        # DATABASE_URL set without a DAGSTER_HOME, or a folder left on SQLite by an older
        # version: Dagster's default SQLite storage under this folder, as before.
        note, storage = "SQLite storage under this folder", ""
    return _EMBEDDED_YAML.replace("{storage_note}", note).replace("{storage}", storage).replace("{database_url}", url)


def prepare_home(settings: Settings) -> Path:
    """$DAGSTER_HOME, or <data>/dagster with our dagster.yaml (written, or brought up to date
    while it is still ours)."""
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        return home
    home = settings.data_dir / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    config, wanted = home / "dagster.yaml", instance_yaml(settings)
    if not config.exists() or (config.read_text().startswith(MARKER) and config.read_text() != wanted):
        config.write_text(wanted)
    return home


def get_instance(settings: Settings) -> DagsterInstance:
    os.environ["DAGSTER_HOME"] = str(prepare_home(settings))
    return DagsterInstance.get()


def _interrupt(signum: int, frame) -> None:  # noqa: ANN001
    raise KeyboardInterrupt


def run_ui(settings: Settings, *, host: str = "127.0.0.1", port: int = 3000) -> int:
    """The webserver and rag-dagster-daemon on this instance until Ctrl-C. Not `dagster dev`:
    that runs plain dagster-daemon, whose 5 s sensor loop made the sensor tick every 5 s while
    the UI said ~1 s, and it warns about the repository's production dagster.yaml."""
    home = prepare_home(settings)
    if settings.embedded_database:
        # Started here rather than by whichever of the two processes opens the instance first:
        # its one line lands above the UI's address, and `rag-pipeline stop` stops it after.
        embedded_pg.ensure_running(data_dir=settings.data_dir)
    env = {**os.environ, "DAGSTER_HOME": str(home), "RAG_DATA_DIR": str(settings.data_dir)}
    bin_dir = Path(sys.executable).parent
    target = ["-m", "rag_pipeline.definitions", "-a", "defs"]
    commands = [
        ([str(bin_dir / "rag-dagster-daemon"), "run", "--log-level", "info", *target], env),
        # Each starts a code server of its own. Runs are launched by the daemon (the queue): the
        # webserver's code server never starts one, so it keeps no forkserver (~215 MB).
        ([str(bin_dir / "dagster-webserver"), "-h", host, "-p", str(port), "--log-level", "info", *target],
         {**env, "RAG_RUN_START": "spawn"}),
    ]
    print(f"Dagster UI: http://{host}:{port}   (instance {home}; daemon with run monitoring and retries; Ctrl-C stops)",
          file=sys.stderr)
    # A service manager stops us with SIGTERM: stop both the same way as on Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    # Started in the instance's folder: no other dagster.yaml is in sight.
    procs = [subprocess.Popen(c, env=e, cwd=home) for c, e in commands]
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()  # SIGTERM: a background job ignores SIGINT
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    stopped = (0, -signal.SIGINT, -signal.SIGTERM, 130, 143)
    return 2 if any(p.returncode not in stopped for p in procs) else 0
