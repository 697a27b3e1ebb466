"""The Dagster instance the CLI uses: $DAGSTER_HOME if set, else one under the data folder."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DagsterInstance

from rag_pipeline.settings import Settings

_EMBEDDED_YAML = """\
# Written by rag-pipeline for the embedded defaults: SQLite storage under this folder.
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    # Embedded Qdrant admits one process at a time; with a Qdrant server, raise this.
    max_concurrent_runs: 1
"""


def get_instance(settings: Settings) -> DagsterInstance:
    if not os.environ.get("DAGSTER_HOME"):
        home = settings.data_dir / "dagster"
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            config.write_text(_EMBEDDED_YAML)
        os.environ["DAGSTER_HOME"] = str(home)
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    return DagsterInstance.get()
