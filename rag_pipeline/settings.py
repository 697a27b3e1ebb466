"""Settings read from the environment: the one model of every variable's name, type, default
and accepted form. The Dagster resources, the sensor's policy, the CLI and the README's table
(`python -m rag_pipeline.settings`) are all made from it.

The names are a contract: operators script against them, so they never change meaning.
With nothing set, everything lives under one data folder on embedded defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from rag_pipeline.core.parsing.base import Limits

if TYPE_CHECKING:
    from rag_pipeline.core.planning import Policy

DEFAULT_MODELS = {
    "hash": "hash-ngrams-v1",
    "openai": "text-embedding-3-small",
    "local": "all-MiniLM-L6-v2",
}
DEFAULT_DIMENSIONS = {"hash": 384, "local": 384}
# The embedded vector store's folder in the data folder (Qdrant Edge), and the one qdrant-client's
# local mode used before it: different names, so neither layout is ever opened as the other.
EMBEDDED_STORE = "vectors"
LEGACY_EMBEDDED_STORE = "qdrant"

# Set while `from_env(env)` builds settings from a given mapping: the process environment is
# then not read at all.
_GIVEN_ONLY: ContextVar[bool] = ContextVar("settings_given_only", default=False)

SECONDS = "a number of seconds, e.g. 0.5"
MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting with a value it cannot take. str() is one line: the variable, the value (never
    a secret's) and the accepted form, fit to print as it is."""

    @classmethod
    def from_validation(cls, exc: ValidationError) -> "SettingsError":
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        field = _FIELDS_BY_ENV.get(name) or name
        info = Settings.model_fields.get(field)
        env = Settings.env_name(field) if info is not None else name or "a setting"
        extra = (info.json_schema_extra or {}) if info is not None else {}
        if extra.get("secret"):
            shown = " is not valid"  # the value of a secret is never printed
        else:
            shown = f"={error['input']!r} is not valid" if "input" in error else " is not valid"
        form = extra.get("form") or error["msg"]
        more = len(exc.errors()) - 1
        return cls(f"{env}{shown}: expected {form}" + (f" ({more} more invalid setting(s))" if more else ""))


def _setting(
    default: Any, env: str, meaning: str, *, form: str, shown: str | None = None, secret: bool = False, **constraints: Any,
) -> Any:
    """A field: its variable, what it means (the README's wording), the accepted form named in
    errors, and the default as the README shows it when it is not the value itself."""
    extra: dict[str, Any] = {"form": form}
    if shown is not None:
        extra["shown"] = shown
    if secret:
        extra["secret"] = True
    return Field(
        default, validation_alias=env, description=meaning, json_schema_extra=extra, repr=not secret, **constraints,
    )


def _count(default: int | None, env: str, meaning: str, *, minimum: int = 1, **kwargs: Any) -> Any:
    return _setting(default, env, meaning, form=f"a whole number of at least {minimum}", ge=minimum, **kwargs)


def _seconds(default: float, env: str, meaning: str, *, zero: bool = True) -> Any:
    # zero: whether 0 is meaningful (no wait, no limit) or a duration must be positive.
    return _setting(default, env, meaning, form=SECONDS, **({"ge": 0} if zero else {"gt": 0}))


class Settings(BaseSettings):
    # Empty variables count as unset (a compose file's `RAG_X=` passes an empty string).
    model_config = SettingsConfigDict(
        env_ignore_empty=True, extra="ignore", populate_by_name=True, case_sensitive=True,
        validate_default=False,
    )

    data_dir: Path = _setting(Path(".rag_data"), "RAG_DATA_DIR", "folder for all embedded state", form="a folder path",
                              shown="./.rag_data")
    database_url: Optional[str] = _setting(
        None, "DATABASE_URL", "our tables (documents, versions, chunks); `postgresql://` uses psycopg 3",
        form="a SQLAlchemy URL (postgresql://USER@HOST/DB or sqlite:///PATH)",
        shown="PostgreSQL in the data folder (`<data>/postgres`, started on demand, unix socket only)",
        secret=True,
    )
    qdrant_url: Optional[str] = _setting(None, "QDRANT_URL", "a Qdrant server (else the embedded folder)",
                                         form="an http(s) URL")
    qdrant_path: Optional[Path] = _setting(None, "QDRANT_PATH", "the embedded vector store (Qdrant Edge) folder",
                                           form="a folder path", shown="`<data>/vectors`")
    qdrant_api_key: Optional[str] = _setting(None, "QDRANT_API_KEY", "the Qdrant server's API key",
                                             form="the key", secret=True)
    inbox_dir: Optional[Path] = _setting(None, "RAG_INBOX_DIR", "landing directory", form="a folder path",
                                         shown="`<data>/inbox`")
    inbox_url: Optional[str] = _setting(
        None, "RAG_INBOX_URL", '`s3://BUCKET/PREFIX`: uploads in a bucket instead (AWS_* settings: see "Landing zones")',
        form="s3://BUCKET/PREFIX",
    )
    sources_file: Optional[Path] = _setting(
        None, "RAG_SOURCES_FILE",
        'a YAML file declaring sources: SQL tables or queries whose rows are documents, and the landing zone (see "Database records")',
        form="a file path",
    )
    s3_connect_timeout_seconds: float = _seconds(
        5.0, "RAG_S3_CONNECT_TIMEOUT_SECONDS", "per S3 request, each retried (`AWS_MAX_ATTEMPTS`, 5)", zero=False)
    s3_read_timeout_seconds: float = _seconds(30.0, "RAG_S3_READ_TIMEOUT_SECONDS", "per S3 read, each retried", zero=False)
    embedder: Literal["hash", "openai", "local"] = _setting(
        "hash", "RAG_EMBEDDER",
        "`hash` (offline), `openai` (any OpenAI-compatible endpoint), `local` (sentence-transformers, `[local]` extra)",
        form="one of hash, openai, local",
    )
    embedding_model: Optional[str] = _setting(None, "RAG_EMBEDDING_MODEL", "model name", form="a model name",
                                              shown="per provider")
    embedding_dimensions: Optional[int] = _setting(None, "RAG_EMBEDDING_DIMENSIONS", "vector width",
                                                   form="a whole number of at least 1", shown="per provider", ge=1)
    openai_api_key: Optional[str] = _setting(None, "OPENAI_API_KEY", "the `openai` client's own API key",
                                             form="the key", secret=True)
    openai_base_url: Optional[str] = _setting(
        None, "OPENAI_BASE_URL", "the `openai` client's endpoint (vLLM, Ollama, LiteLLM, TEI...)", form="an http(s) URL",
    )
    collection: str = _setting(
        "rag_chunks", "RAG_COLLECTION",
        "the Qdrant alias search reads; each embedding configuration gets its own collection behind it",
        form="a collection name", min_length=1,
    )
    keyword_vectors: bool = _setting(
        True, "RAG_KEYWORD_VECTORS",
        "a BM25 keyword (sparse) vector beside each chunk's dense one, for hybrid and keyword search; part of the index "
        "configuration (changing it builds a new collection behind the alias, re-embedding nothing)",
        form="true or false",
    )
    search_mode: Literal["hybrid", "dense", "keyword"] = _setting(
        "hybrid", "RAG_SEARCH_MODE",
        "`hybrid` (dense and keyword results fused by reciprocal rank), `dense` or `keyword`; a collection without "
        "keyword vectors is searched dense",
        form="one of hybrid, dense, keyword",
    )
    serve_host: str = _setting("127.0.0.1", "RAG_SERVE_HOST", "the address `rag-pipeline serve` listens on",
                               form="a host name or IP address", min_length=1)
    serve_port: int = _setting(8000, "RAG_SERVE_PORT", "the port `rag-pipeline serve` listens on",
                               form="a port number from 1 to 65535", ge=1, le=65535)
    serve_token: Optional[str] = _setting(
        None, "RAG_SERVE_TOKEN", "a bearer token `rag-pipeline serve` requires on `POST /search` (unset: none)",
        form="the token", secret=True,
    )
    chunk_tokens: int = _count(400, "RAG_CHUNK_TOKENS", "chunk size in cl100k tokens")
    chunk_overlap: int = _count(60, "RAG_CHUNK_OVERLAP", "chunk overlap in cl100k tokens", minimum=0)
    docs_per_run: int = _count(2500, "RAG_DOCS_PER_RUN", "documents per Dagster run (each run costs a process start: ~0.3 s forked from the code server, ~1 s spawned)")
    max_file_bytes: int = _setting(
        Limits.max_file_bytes, "RAG_MAX_FILE_BYTES", "larger files are refused without being read",
        form="a whole number of bytes", shown=f"{Limits.max_file_bytes // MIB} MiB", ge=1,
    )
    max_pages: int = _count(Limits.max_pages, "RAG_MAX_PAGES", "PDFs with more pages are refused")
    max_chunks: int = _count(Limits.max_chunks, "RAG_MAX_CHUNKS", "documents making more chunks are refused")
    max_unpacked_bytes: int = _setting(
        Limits.max_unpacked_bytes, "RAG_MAX_UNPACKED_BYTES", "a `.docx` unpacking to more is refused as a zip bomb",
        form="a whole number of bytes", shown=f"{Limits.max_unpacked_bytes // MIB} MiB", ge=1,
    )
    parse_timeout_seconds: float = _seconds(
        Limits.parse_timeout_seconds, "RAG_PARSE_TIMEOUT_SECONDS",
        "per-file time limit of the PDF/DOCX/HTML parser process (0: parse in-process)")
    parse_memory_mb: int = _setting(Limits.parse_memory_mb, "RAG_PARSE_MEMORY_MB",
                                    "per-file memory limit of the PDF/DOCX/HTML parser process",
                                    form="a whole number of MB (0: no cap)", ge=0)
    max_rows: int = _count(Limits.max_rows, "RAG_MAX_ROWS", "workbooks with more rows (all sheets) are refused")
    max_image_pixels: int = _count(
        Limits.max_image_pixels, "RAG_MAX_IMAGE_PIXELS", "images declaring more pixels are refused unread (pixel bombs)",
    )
    ocr: Literal["auto", "off"] = _setting(
        Limits.ocr, "RAG_OCR", "`auto`: OCR images and PDF pages without text; `off`: refuse them", form="auto or off",
    )
    ocr_languages: str = _setting(
        Limits.ocr_languages, "RAG_OCR_LANGUAGES",
        "Tesseract language codes joined by `+` (`eng+deu`); each needs `tesseract-ocr-<code>`",
        form="Tesseract language codes joined by '+', e.g. eng+deu", pattern=r"^[A-Za-z_]+(\+[A-Za-z_]+)*$",
    )
    settle_seconds: float = _seconds(
        1.0, "RAG_SETTLE_SECONDS", "the sensor leaves a file modified more recently than this for a later tick")
    sensor_interval_seconds: int = _setting(
        1, "RAG_SENSOR_INTERVAL_SECONDS",
        "minimum time between `inbox_sensor` ticks (a local landing folder is watched and walked only when something "
        "in it changed, or every 30 s; elsewhere, after an idle tick slower than 0.25 s, as over ~30,000 files, the "
        "sensor rests four times its duration; a tick that found work is followed at once)",
        form="a whole number of seconds of at least 1 (Dagster's minimum interval)", ge=1,
    )
    sensor_loop_seconds: float = _setting(
        0.5, "RAG_SENSOR_LOOP_SECONDS",
        "how often `rag-dagster-daemon` looks for due sensors (plain `dagster-daemon` looks every 5 s, not configurable)",
        form="a number of seconds from 0.1 to 60", ge=0.1, le=60,
    )
    run_processes: int = _count(
        0, "RAG_RUN_PROCESSES",
        "processes `rag-pipeline run` indexes in at once, each a run of at least 250 documents (0: one per CPU, "
        "at most 4; always 1 on SQLite)", minimum=0)
    run_start: Literal["fork", "spawn"] = _setting(
        "fork", "RAG_RUN_START",
        "how a code server starts a run's process: forked from one that imported Dagster, the definitions and the "
        "steps' libraries once (~1 s less per run), or spawned afresh as Dagster does",
        form="fork or spawn",
    )
    embed_batch_size: int = _count(128, "RAG_EMBED_BATCH_SIZE", "texts per embedding request")
    embed_timeout_seconds: float = _seconds(60.0, "RAG_EMBED_TIMEOUT_SECONDS",
                                            "per embedding request; 429/5xx/timeouts retried with backoff", zero=False)
    embed_max_retries: int = _count(6, "RAG_EMBED_MAX_RETRIES", "retries of an embedding request", minimum=0)
    embed_concurrency: int = _count(
        2, "RAG_EMBED_CONCURRENCY",
        "runs calling the endpoint at once (slots of the `rag_embedding_endpoint` pool when the sensor creates it; "
        "change later with `dagster instance concurrency set`)")
    embed_requests: int = _count(
        2, "RAG_EMBED_REQUESTS",
        "batches one embedding step has at an OpenAI-compatible endpoint at once (so up to `RAG_EMBED_CONCURRENCY` "
        "x this requests in flight)")
    overdue_seconds: float = _seconds(
        120.0, "RAG_OVERDUE_SECONDS", "a document not indexed this long after upload fails its `indexed_in_time` check", zero=False)
    max_attempts: int = _count(3, "RAG_MAX_ATTEMPTS", "runs a document version is handed to before it is parked as failed")
    audit_cron: str = _setting("17 3 * * *", "RAG_AUDIT_CRON", "when `nightly_index_audit` runs the corpus-wide audit",
                               form="a cron expression of five fields, e.g. '17 3 * * *'")
    executor: str = _setting(
        "in_process", "RAG_EXECUTOR",
        "where the steps run: `in_process`, `multiprocess`, `celery`, `docker`, `k8s`, `celery_k8s` or `module:attribute`",
        form="an executor name or module:attribute", min_length=1,
    )
    # May name a broker with credentials.
    executor_config: Optional[str] = _setting(
        None, "RAG_EXECUTOR_CONFIG", 'the executor\'s config as JSON (`{"env": "VAR"}` for secrets)',
        form="a JSON object", secret=True,
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError.from_validation(exc) from None

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,) if _GIVEN_ONLY.get() else (init_settings, env_settings)

    @field_validator("inbox_url")
    @classmethod
    def _bucket_url(cls, url: Optional[str]) -> Optional[str]:
        url = (url or "").strip()
        if url and not url.startswith("s3://"):
            raise ValueError("not an s3:// URL")
        return url or None

    @field_validator("embedder", "ocr", "search_mode", mode="before")
    @classmethod
    def _provider(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("executor", mode="before")
    @classmethod
    def _executor(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("audit_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("not a cron expression")
        return value

    @field_validator("executor_config")
    @classmethod
    def _json_object(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise ValueError("not a JSON object")
        return value

    @model_validator(mode="after")
    def _derived_defaults(self) -> "Settings":
        # Defaults that follow from other settings: the data folder, the provider.
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            # Our tables and Dagster's storage on a PostgreSQL server in the data folder,
            # started by the first process that connects (embedded_pg.py). A folder made
            # when the default was SQLite stays on it.
            from rag_pipeline import embedded_pg

            if embedded_pg.legacy_sqlite(self.data_dir):
                self.database_url = f"sqlite:///{self.data_dir / embedded_pg.LEGACY_SQLITE}"
            else:
                self.database_url = embedded_pg.database_url(self.data_dir)
        self.inbox_dir = Path(self.inbox_dir or self.data_dir / "inbox").expanduser().resolve()
        self.qdrant_path = Path(self.qdrant_path or self.data_dir / EMBEDDED_STORE).expanduser().resolve()
        self.embedding_model = self.embedding_model or DEFAULT_MODELS[self.embedder]
        if self.embedding_dimensions is None:
            self.embedding_dimensions = DEFAULT_DIMENSIONS.get(self.embedder)
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """From the process environment, or from `env` alone (nothing else is read)."""
        if env is None:
            return cls()
        given = {name: value for name, value in env.items() if name in _FIELDS_BY_ENV and value.strip()}
        token = _GIVEN_ONLY.set(True)
        try:
            return cls(**given)
        finally:
            _GIVEN_ONLY.reset(token)

    @classmethod
    def env_name(cls, field: str) -> str:
        return str(cls.model_fields[field].validation_alias)

    @property
    def embedded_database(self) -> bool:
        """Whether DATABASE_URL is this data folder's embedded PostgreSQL (the default)."""
        from rag_pipeline import embedded_pg

        return embedded_pg.data_dir_of(self.database_url or "") == self.data_dir

    @property
    def legacy_sqlite(self) -> bool:
        """Whether this is a data folder left on SQLite by an older version (no DATABASE_URL)."""
        from rag_pipeline import embedded_pg

        return self.database_url == f"sqlite:///{self.data_dir / embedded_pg.LEGACY_SQLITE}"

    @property
    def legacy_qdrant_path(self) -> Path | None:
        """Where the embedded index of an older version is (`<data>/qdrant`, qdrant-client's local
        mode), copied into the store on its first open; only for the default store folder."""
        if self.qdrant_url or self.qdrant_path != self.data_dir / EMBEDDED_STORE:
            return None
        return self.data_dir / LEGACY_EMBEDDED_STORE

    @property
    def limits(self) -> Limits:
        return Limits(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Limits)})

    @property
    def policy(self) -> "Policy":
        """The sensor's (and `rag-pipeline run`'s) policy for handing out uploads."""
        from rag_pipeline.core.planning import Policy

        return Policy(
            docs_per_run=self.docs_per_run, settle_seconds=self.settle_seconds,
            overdue_seconds=self.overdue_seconds, max_attempts=self.max_attempts,
        )

    @property
    def cli_processes(self) -> int:
        """RAG_RUN_PROCESSES, with 0 resolved to the machine's CPUs (at most 4); 1 on SQLite,
        which takes one writer at a time (a second process would wait on its lock)."""
        if (self.database_url or "").startswith("sqlite"):
            return 1
        return self.run_processes or min(os.cpu_count() or 1, 4)

    @property
    def embedding_spec(self):  # noqa: ANN201
        from rag_pipeline.core.generations import EmbeddingSpec

        return EmbeddingSpec(
            self.embedder, self.embedding_model, self.embedding_dimensions, self.openai_base_url, self.keyword_vectors,
        )


_FIELDS_BY_ENV = {str(info.validation_alias): name for name, info in Settings.model_fields.items()}


def settings_table() -> str:
    """The README's table of settings, from the model (a test keeps the README in step)."""
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra or {}
        if "shown" in extra:
            default = extra["shown"]
        elif info.default is None:
            default = ""
        else:
            value = info.default
            value = int(value) if isinstance(value, float) and value.is_integer() else value
            default = f"`{value}`"
        rows.append(f"| `{Settings.env_name(name)}` | {info.description} | {default} |")
    return "\n".join(rows)


def _landing_folder(settings: Settings) -> Path:
    """The landing folder, created when it is the data folder's own `inbox`: that one missing is
    merely empty (a first run that reads only SQL sources must not report it every time). A
    folder set elsewhere and missing stays a problem: an unmounted volume must not read as
    every upload deleted."""
    if settings.inbox_url is None and settings.inbox_dir == settings.data_dir / "inbox":
        settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    return settings.inbox_dir


def open_source(settings: Settings):  # noqa: ANN201
    """The landing zone outside Dagster (CLI, scripts): the bucket of RAG_INBOX_URL, else the
    folder RAG_INBOX_DIR."""
    from rag_pipeline.core.sources import open_source as _open

    if settings.sources_file:
        return open_sources(settings).landing  # the file may declare the landing zone
    return _open(
        url=settings.inbox_url, folder=_landing_folder(settings),
        timeouts=(settings.s3_connect_timeout_seconds, settings.s3_read_timeout_seconds),
    )


def open_sources(settings: Settings):  # noqa: ANN201
    """Every source the settings declare, as one `SourceSet` (the run's reads go through it),
    with the sources file's problems in its `errors` ({source name or "": one line})."""
    from rag_pipeline.core.sources import build_source_set

    return build_source_set(
        sources_file=settings.sources_file, url=settings.inbox_url, folder=_landing_folder(settings),
        timeouts=(settings.s3_connect_timeout_seconds, settings.s3_read_timeout_seconds),
    )


def open_vector_store(settings: Settings, engine=None):  # noqa: ANN001, ANN201
    """The collection the configured embedding writes to, outside Dagster (CLI, tests,
    scripts). With `engine`, it is registered as that configuration's generation."""
    from rag_pipeline.core import generations
    from rag_pipeline.core.vectorstore import VectorStore, open_client

    client = open_client(settings.qdrant_url, settings.qdrant_path, settings.qdrant_api_key, legacy=settings.legacy_qdrant_path)
    spec = settings.embedding_spec
    if engine is not None:
        return VectorStore(
            client, generations.for_writing(engine, client, settings.collection, spec).collection, keyword=spec.keyword,
        )
    return VectorStore(client, generations.collection_name(settings.collection, spec.fingerprint), keyword=spec.keyword)


def make_settings_embedder(settings: Settings, spec=None):  # noqa: ANN001, ANN201
    """The configured embedder, or one for `spec` (a collection's recorded configuration; the
    API key still comes from the settings)."""
    from rag_pipeline.core.embedding import make_embedder

    spec = spec or settings.embedding_spec
    return make_embedder(
        spec.provider, spec.model, spec.dimensions, settings.openai_api_key, spec.base_url,
        settings.embed_batch_size, settings.embed_timeout_seconds, settings.embed_max_retries,
    )


if __name__ == "__main__":
    print(settings_table())
