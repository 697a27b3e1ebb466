"""An operator's mistakes and the CLI's manners (issue 22, items 3, 4 and 6), through the CLI's
main() in this process: the same code a `rag-pipeline` process runs, on real PostgreSQL,
embedded Qdrant and the local endpoint. The same checks as processes are in test_cli.py (slow)."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest
from dagster import DagsterInstance

from rag_pipeline import embedded_pg
from rag_pipeline.cli import build_parser, main
from rag_pipeline.core import records
from rag_pipeline.core.db import open_engine
from rag_pipeline.core.endpoints import missing_key_problem
from rag_pipeline.core.identity import document_id
from rag_pipeline.devtools.embedding_server import EmbeddingServer
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import embedded_data_dir, write_files  # noqa: F401 (a fixture)


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(capfd: pytest.CaptureFixture, *args: str) -> tuple[int, str, list[str]]:
    capfd.readouterr()
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def assert_one_clear_line(err: list[str], *names: str) -> None:
    """At most 3 lines on stderr, naming the setting(s), no traceback, no library warning."""
    text = "\n".join(err)
    assert 1 <= len(err) <= 3, text
    assert "Traceback" not in text and "Warning" not in text, text
    for name in names:
        assert name in text, text


def inbox(rag_env: dict) -> Path:
    return Path(rag_env["RAG_DATA_DIR"]) / "inbox"


def test_a_missing_database_is_one_line_and_doctor_names_it(rag_env, capfd, monkeypatch):
    missing = rag_env["DATABASE_URL"].rsplit("/", 1)[0] + f"/rag_missing_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DATABASE_URL", missing.replace("postgres@", "postgres:hunter2@"))
    write_files(inbox(rag_env), "kb", {"a.txt": b"Kestrels hover over verges."})
    for verb in (["status"], ["run"], ["retry"]):
        code, out, err = cli(capfd, *verb)
        assert code == 2, (verb, out, err)
        assert_one_clear_line(err, "DATABASE_URL=", "does not exist", "createdb")
        assert "hunter2" not in "\n".join(err)  # the value, without its password
    code, out, _ = cli(capfd, "doctor", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    broken = {c["part"]: c for c in report["checks"] if c["status"] == "FAILED"}
    assert set(broken) == {"database"} and "does not exist" in broken["database"]["detail"]
    assert "hunter2" not in out
    # --debug: the traceback, for whoever wants it.
    with pytest.raises(Exception, match="does not exist"):
        main(["status", "--debug"])


def test_a_closed_qdrant_port_is_one_line_from_search_run_and_doctor(rag_env, capfd, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("QDRANT_URL", url)
    write_files(inbox(rag_env), "kb", {"a.txt": b"Dormice hibernate in hazel woods."})
    code, _, err = cli(capfd, "search", "dormice")
    assert code == 2
    assert_one_clear_line(err, f"QDRANT_URL={url}", "not reachable")
    # The write step fails with the same line (the UI's failure message); the document waits.
    code, out, err = cli(capfd, "run")
    assert code == 2
    assert_one_clear_line(err, f"QDRANT_URL={url}")
    engine = open_engine(rag_env["DATABASE_URL"])
    [row] = records.list_documents(engine)
    assert row.status == records.PENDING and f"QDRANT_URL={url}" in row.error
    code, out, _ = cli(capfd, "doctor", "--json")
    assert code == 1
    assert [c["part"] for c in json.loads(out)["checks"] if c["status"] == "FAILED"] == ["qdrant"]


def test_a_closed_endpoint_is_one_line_naming_the_url(rag_env, capfd, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("RAG_EMBED_MAX_RETRIES", "0")
    write_files(inbox(rag_env), "kb", {"a.txt": b"Herons stand still in the shallows."})
    code, _, err = cli(capfd, "run")
    assert code == 2
    assert_one_clear_line(err, f"OPENAI_BASE_URL={url}", "not reachable", "connection refused")
    code, out, _ = cli(capfd, "doctor", "--json")
    assert code == 1
    [embedding] = [c for c in json.loads(out)["checks"] if c["status"] == "FAILED"]
    assert embedding["part"] == "embedding" and url in embedding["detail"]


def test_a_rejected_key_is_the_one_line(rag_env, capfd, monkeypatch):
    with EmbeddingServer(dimensions=256, api_key="the-right-key") as guarded:
        monkeypatch.setenv("OPENAI_BASE_URL", guarded.base_url)
        write_files(inbox(rag_env), "kb", {"a.txt": b"Otters hold hands while they sleep."})
        code, _, err = cli(capfd, "run")
    assert code == 2
    assert_one_clear_line(err, "check OPENAI_API_KEY", "401", guarded.base_url.rstrip("/"))
    assert rag_env["OPENAI_API_KEY"] not in "\n".join(err)


def test_no_key_for_a_host_that_needs_one_is_caught_before_any_run(rag_env, capfd, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1")
    write_files(inbox(rag_env), "kb", {"a.txt": b"Badgers dig setts under hedges."})
    code, _, err = cli(capfd, "run")
    assert code == 2
    assert_one_clear_line(err, "OPENAI_API_KEY is not set", "https://api.openai.com/v1")
    # Nothing registered, no run created.
    assert records.list_documents(open_engine(rag_env["DATABASE_URL"])) == []
    with DagsterInstance.get() as instance:
        assert instance.get_runs_count() == 0
    code, out, _ = cli(capfd, "doctor", "--json")
    assert [c["part"] for c in json.loads(out)["checks"] if c["status"] == "FAILED"] == ["embedding"]


def test_the_sensor_skips_its_tick_while_the_key_is_missing(rag_env, monkeypatch):
    from rag_pipeline.definitions import build_definitions
    from rag_pipeline_tests.helpers import tick_and_run

    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://embeddings.example.com/v1")
    write_files(inbox(rag_env), "kb", {"a.txt": b"Swifts sleep on the wing."})
    defs = build_definitions(Settings.from_env())
    with DagsterInstance.get() as instance:
        result, runs = tick_and_run(defs, instance)
    assert runs == [] and "OPENAI_API_KEY is not set" in result.skip_reason.skip_message
    assert records.list_documents(open_engine(rag_env["DATABASE_URL"])) == []


@pytest.mark.parametrize(("url", "needs"), [
    (None, True), ("https://api.openai.com/v1", True), ("https://my-gateway.example.com/v1", True),
    ("http://127.0.0.1:8000/v1", False), ("http://localhost:11434/v1", False), ("http://ollama:11434/v1", False),
    ("http://10.0.0.5/v1", False), ("http://[::1]:8000/v1", False), ("http://embed.internal/v1", False),
])
def test_which_hosts_need_a_key(url, needs):
    assert bool(missing_key_problem(provider="openai", base_url=url, api_key=None)) is needs
    assert missing_key_problem(provider="openai", base_url=url, api_key="sk-x") is None
    assert missing_key_problem(provider="hash", base_url=url, api_key=None) is None


def test_run_exit_codes_status_ids_retry_by_path_and_problems(rag_env, capfd):
    write_files(inbox(rag_env), "kb", {"good.txt": b"Puffins nest in burrows on cliff tops.", "bad.pdf": b"%PDF-1.7 truncated"})
    (inbox(rag_env) / "stray.txt").write_bytes(b"not in a knowledge base")
    code, out, _ = cli(capfd, "run")
    assert code == 1  # a document of this run failed
    assert "failed: kb/bad.pdf: corrupt PDF" in out
    assert "problem: stray.txt" in out  # shown without --json
    # Nothing new: the old failure is not this run's (cron stays quiet) unless --strict.
    assert cli(capfd, "run")[0] == 0
    code, out, _ = cli(capfd, "run", "--strict")
    assert code == 1 and "kb/bad.pdf" in out
    # status prints the id's start; retry takes it, or KB/PATH.
    code, out, _ = cli(capfd, "status")
    bad = document_id("kb", "bad.pdf")
    assert f"failed   {bad[:8]}  kb/bad.pdf" in out
    for name in ("kb/bad.pdf", bad[:8]):
        code, out, _ = cli(capfd, "retry", name, "--json")
        assert code == 0 and json.loads(out) == {"requeued": 1}
        assert cli(capfd, "run")[0] == 1  # fails again, in this run
    code, _, err = cli(capfd, "retry", "kb/nope.txt")
    assert code == 2 and err == ["rag-pipeline retry: no such document: kb/nope.txt (see `rag-pipeline status`)"]


def test_search_leaves_out_zero_score_filler(rag_env, capfd, monkeypatch):
    monkeypatch.setenv("RAG_EMBEDDER", "hash")
    for name in ("RAG_EMBEDDING_MODEL", "RAG_EMBEDDING_DIMENSIONS"):
        monkeypatch.delenv(name)
    write_files(inbox(rag_env), "kb", {"a.txt": b"Puffins nest in burrows.", "b.txt": b"Glaciers carve valleys."})
    assert cli(capfd, "run")[0] == 0
    code, out, _ = cli(capfd, "search", "puffins", "-k", "5", "--json")
    hits = json.loads(out)
    assert [h["path"] for h in hits] == ["a.txt"] and hits[0]["score"] > 0
    assert cli(capfd, "search", "zebra")[1].strip() == "no results"


def test_progress_moves_per_document_and_step(rag_env):
    from rag_pipeline.core.progress import observe
    from rag_pipeline.pipeline_runner import run_pending

    write_files(inbox(rag_env), "kb", {f"d{i}.txt": f"Document {i} about lighthouses and tides.".encode() for i in range(6)})
    seen: list[tuple[str, float]] = []
    with observe(lambda step, n: seen.append((step, n))):
        summary = run_pending(Settings.from_env())
    assert summary["indexed"] == 6 and summary["runs"] == 1
    extract = [n for step, n in seen if step == "extract"]
    assert extract == [1.0] * 6  # one by one, not once per run
    assert sum(n for step, n in seen if step == "chunk") == 6
    assert sum(n for step, n in seen if step == "embed") == pytest.approx(6)


def test_every_argument_has_help_and_every_verb_examples():
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    for name, verb in sub.choices.items():
        assert "example" in (verb.epilog or ""), name
        for action in verb._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"
    assert "exit codes" in sub.choices["run"].epilog and "--strict" in sub.choices["run"].epilog


def test_the_data_folder_is_printed_when_created(rag_env, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "fresh"))
    code, _, err = cli(capfd, "search", "anything")  # embedded Qdrant's folder is in it
    assert code == 0 and err == [f"rag-pipeline: created the data folder {tmp_path / 'fresh'} (RAG_DATA_DIR)"]
    assert cli(capfd, "search", "anything")[2] == []  # only when created


def test_the_ui_instance_is_the_documented_one(embedded_data_dir, monkeypatch):
    """What `rag-pipeline ui` serves: run monitoring with the heartbeat launcher, retries, INFO,
    its storage on the data folder's PostgreSQL through the deployed pooled event log."""
    from rag_pipeline.defs.storage import PooledPostgresEventLogStorage
    from rag_pipeline.defs.run_launcher import HeartbeatRunLauncher
    from rag_pipeline.instance import MARKER, prepare_home

    tmp_path = embedded_data_dir
    for name in ("DAGSTER_HOME", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env({"RAG_DATA_DIR": str(tmp_path)})
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(f"{MARKER} by an older version\ntelemetry:\n  enabled: false\n")
    assert prepare_home(settings) == home
    with DagsterInstance.from_config(str(home)) as instance:
        # Opening the instance started the server: nothing else had.
        assert embedded_pg.running_pid(data_dir=tmp_path) is not None
        assert isinstance(instance.event_log_storage, PooledPostgresEventLogStorage)
        assert type(instance.run_storage).__name__ == "EmbeddedPostgresRunStorage"
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        assert isinstance(instance.run_launcher, HeartbeatRunLauncher)
        assert instance.run_launcher.database_url == settings.database_url
        assert instance.get_settings("python_logs")["python_log_level"] == "INFO"
    # An instance someone wrote by hand is theirs.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    prepare_home(settings)
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_kinds_name_the_configured_backends(tmp_path):
    from rag_pipeline.definitions import build_definitions

    def kinds(env: dict) -> dict:
        defs = build_definitions(Settings.from_env({"RAG_DATA_DIR": str(tmp_path), **env}))
        return {s.key.to_user_string(): s.kinds for s in defs.resolve_all_asset_specs()}

    embedded = kinds({})  # the data folder's PostgreSQL
    assert embedded["source_document"] == {"python", "postgres"}
    assert embedded["chunk_vectors"] == {"offline", "postgres"}
    assert embedded["document_embeddings"] == {"qdrant", "embedded"}
    served = kinds({"DATABASE_URL": "postgresql://rag@db/rag", "QDRANT_URL": "http://qdrant:6333",
                    "RAG_EMBEDDER": "openai", "OPENAI_API_KEY": "sk-x", "RAG_INBOX_URL": "s3://uploads/landing"})
    assert served["chunk_vectors"] == {"openai", "postgres"} and served["document_embeddings"] == {"qdrant"}
    assert served["source_document"] == {"python", "postgres", "s3"}
