"""The one settings model: types, defaults, one-line errors, the README's table, resources built
from it; and importing the code changes no global state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rag_pipeline.settings import Settings, SettingsError, settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_settings_table_is_the_models():
    # Regenerate with: python -m rag_pipeline.settings
    assert settings_table() in README.read_text(), "README's settings table differs from rag_pipeline.settings"


def test_durations_take_fractions_and_names_are_the_environments(tmp_path):
    settings = Settings.from_env({
        "RAG_DATA_DIR": str(tmp_path), "RAG_SETTLE_SECONDS": "0.5", "RAG_OVERDUE_SECONDS": "2.5",
        "RAG_EMBED_TIMEOUT_SECONDS": "1.5", "RAG_PARSE_TIMEOUT_SECONDS": "0.25", "RAG_EMBEDDER": " OpenAI ",
        "RAG_CHUNK_TOKENS": "", "UNRELATED": "x",
    })
    assert (settings.settle_seconds, settings.overdue_seconds, settings.embed_timeout_seconds) == (0.5, 2.5, 1.5)
    assert settings.limits.parse_timeout_seconds == 0.25
    assert settings.embedder == "openai" and settings.embedding_model == "text-embedding-3-small"
    assert settings.embedding_dimensions is None  # the endpoint's own width
    assert settings.chunk_tokens == 400  # empty counts as unset
    # The data folder's own PostgreSQL (nothing is started by reading settings).
    assert settings.database_url == f"postgresql://rag@/rag?host={tmp_path.resolve() / 'postgres' / 'rag-socket'}"
    assert settings.embedded_database and not (tmp_path / "postgres").exists()
    assert settings.inbox_dir == tmp_path.resolve() / "inbox"
    assert settings.policy.settle_seconds == 0.5


def test_run_processes_default_to_the_cpus_and_to_one_on_sqlite(tmp_path):
    import os

    base = {"RAG_DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql://u@127.0.0.1/db"}
    assert Settings.from_env(base).cli_processes == min(os.cpu_count() or 1, 4)
    assert Settings.from_env({**base, "RAG_RUN_PROCESSES": "3"}).cli_processes == 3
    sqlite = {**base, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "RAG_RUN_PROCESSES": "3"}
    assert Settings.from_env(sqlite).cli_processes == 1


def test_a_given_mapping_is_all_that_is_read(monkeypatch):
    monkeypatch.setenv("RAG_MAX_PAGES", "7")
    assert Settings.from_env().max_pages == 7
    assert Settings.from_env({}).max_pages == Settings.model_fields["max_pages"].default


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("RAG_SETTLE_SECONDS", "soon", "RAG_SETTLE_SECONDS='soon' is not valid: expected a number of seconds, e.g. 0.5"),
    ("RAG_SETTLE_SECONDS", "-1", "RAG_SETTLE_SECONDS='-1' is not valid: expected a number of seconds, e.g. 0.5"),
    ("RAG_CHUNK_TOKENS", "1.5", "RAG_CHUNK_TOKENS='1.5' is not valid: expected a whole number of at least 1"),
    ("RAG_EMBEDDER", "bert", "RAG_EMBEDDER='bert' is not valid: expected one of hash, openai, local"),
    ("RAG_INBOX_URL", "gs://b/p", "RAG_INBOX_URL='gs://b/p' is not valid: expected s3://BUCKET/PREFIX"),
    ("RAG_AUDIT_CRON", "nightly", "RAG_AUDIT_CRON='nightly' is not valid: expected a cron expression of five fields, "
     "e.g. '17 3 * * *'"),
    # May carry a broker's credentials: named, never shown.
    ("RAG_EXECUTOR_CONFIG", '["user:hunter2"]', "RAG_EXECUTOR_CONFIG is not valid: expected a JSON object"),
])
def test_a_bad_value_is_one_line_naming_the_variable_and_the_accepted_form(name, value, expected, monkeypatch):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value) == expected and isinstance(caught.value, ValueError)
    monkeypatch.setenv(name, value)  # the process environment: the same line
    with pytest.raises(SettingsError, match=f"^{expected[:20]}"):
        Settings()


def test_secrets_stay_out_of_repr_and_errors():
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-very-secret", "DATABASE_URL": "postgresql://u:pw-secret@h/db"})
    assert "very-secret" not in repr(settings) and "pw-secret" not in repr(settings)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"RAG_EXECUTOR_CONFIG": "{pw-secret"})
    assert "pw-secret" not in str(caught.value)


def test_resources_are_built_from_the_settings_and_the_inbox_carries_no_sensor_policy(tmp_path):
    from rag_pipeline.definitions import build_resources
    from rag_pipeline.defs.resources import InboxResource

    settings = Settings.from_env({
        "RAG_DATA_DIR": str(tmp_path), "RAG_MAX_PAGES": "9", "RAG_S3_READ_TIMEOUT_SECONDS": "2.5",
        "RAG_EMBED_REQUESTS": "3", "RAG_CHUNK_OVERLAP": "10", "RAG_COLLECTION": "c",
    })
    resources = build_resources(settings)
    inbox = resources["inbox"]
    assert inbox.max_pages == 9 and inbox.s3_read_timeout_seconds == 2.5 and inbox.limits == settings.limits
    assert resources["embedder"].requests_in_flight == 3 and resources["chunker"].overlap == 10
    assert resources["vector_store"].collection == "c" and resources["vector_store"].path == str(settings.qdrant_path)
    assert not {"docs_per_run", "settle_seconds", "overdue_seconds", "max_attempts"} & set(InboxResource.model_fields)


# Slow tier: a fresh interpreter importing every module.
@pytest.mark.slow
def test_importing_the_code_changes_no_global_state():
    """Environment switches, warning filters and library patches are installed by whoever needs
    them (defs/tuning.py, the embedded Qdrant path), not by an import."""
    probe = """
import json, os, sys, warnings
import dagster, dagster_postgres, numpy, pydantic_settings, qdrant_client, sqlalchemy  # libraries' own filters
filters = list(warnings.filters)
import rag_pipeline.cli, rag_pipeline.pipeline_runner, rag_pipeline.daemon
import rag_pipeline.defs.assets, rag_pipeline.defs.checks, rag_pipeline.defs.sensors, rag_pipeline.defs.storage
import rag_pipeline.defs.run_launcher, rag_pipeline.core.vectorstore, rag_pipeline.core.planning
from rag_pipeline.defs import dagster_internals
print(json.dumps({
    "env": sorted(k for k in os.environ if k.startswith("DAGSTER_EVENT") or k.startswith("DAGSTER_EMIT")),
    "filters": warnings.filters == filters,
    "pool_wait": not dagster_internals.pool_wait_installed(),
}))
"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("DAGSTER_E")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state == {"env": [], "filters": True, "pool_wait": True}
