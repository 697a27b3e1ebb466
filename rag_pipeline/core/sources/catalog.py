"""Declared sources: `RAG_SOURCES_FILE`, a YAML file listing the landing zone and SQL sources.

```yaml
sources:
  - name: tickets
    kind: sql
    url: postgresql://rag:${TICKETS_DB_PASSWORD}@db/tickets   # ${VAR} from the environment
    table: tickets                 # or query: SELECT ...
    id: id
    knowledge_base: support        # or {column: tenant}
    text: [title, body]            # labelled sections, in this order
    metadata: [project, status]    # kept on every chunk, filterable in search
    updated_at: updated_at         # optional: incremental reads
  - name: inbox
    kind: folder                   # or kind: s3 with url: s3://BUCKET/PREFIX
    path: /srv/inbox
```

Each source is validated on its own: a bad one is one message naming the file, the source and
the key, and the others are used as declared. A file that cannot be read at all is one message
too; the landing zone of the environment (RAG_INBOX_DIR / RAG_INBOX_URL) then stays in use.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from rag_pipeline.core.identity import validate_kb_name

# A source's name is its sensor's name (`<name>_sensor`) and the first segment of its rows'
# paths, so it must be a Dagster name and a clean path segment.
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
# The landing zone of the environment, when the file declares none: its sensor stays
# `inbox_sensor`.
DEFAULT_LANDING_NAME = "inbox"
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise ValueError("a letter, then letters, digits or _ (at most 63): it names the sensor and the rows' paths")
        return value


class FolderSpec(_Spec):
    kind: Literal["folder"]
    path: Path


class S3Spec(_Spec):
    kind: Literal["s3"]
    url: str

    @field_validator("url")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not value.startswith("s3://"):
            raise ValueError("expected s3://BUCKET/PREFIX")
        return value


class ColumnRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str


class SqlSpec(_Spec):
    kind: Literal["sql"]
    url: str = Field(repr=False)  # may hold a password once ${VAR} is expanded
    query: Optional[str] = None
    table: Optional[str] = None
    id: str
    knowledge_base: Union[str, ColumnRef]
    text: list[str] = Field(min_length=1)
    metadata: list[str] = Field(default_factory=list)
    updated_at: Optional[str] = None
    # A listing losing more than this share of the source's documents holds the deletions
    # until `rag-pipeline run --confirm-deletions NAME`: an empty replica or a broken WHERE
    # looks exactly like a purge.
    max_delete_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    # With updated_at: rows changed this long before the cursor are read again (clock skew
    # between writers, transactions committing after a later timestamp was read).
    overlap_seconds: float = Field(default=60.0, ge=0.0)
    # Seconds a statement may take before the listing fails (documents wait).
    timeout_seconds: float = Field(default=60.0, gt=0.0)

    @field_validator("knowledge_base")
    @classmethod
    def _kb(cls, value: Union[str, ColumnRef]) -> Union[str, ColumnRef]:
        if isinstance(value, str):
            validate_kb_name(value)
        return value

    @field_validator("text", "metadata")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a column is listed twice")
        return value

    @model_validator(mode="after")
    def _query_or_table(self) -> "SqlSpec":
        if (self.query is None) == (self.table is None):
            raise ValueError("give exactly one of 'query' and 'table'")
        return self

    def columns(self) -> dict[str, str]:
        """Every column the source reads, with the key that names it (for error messages)."""
        wanted = {self.id: "id"}
        if isinstance(self.knowledge_base, ColumnRef):
            wanted.setdefault(self.knowledge_base.column, "knowledge_base")
        for column in self.text:
            wanted.setdefault(column, "text")
        for column in self.metadata:
            wanted.setdefault(column, "metadata")
        if self.updated_at:
            wanted.setdefault(self.updated_at, "updated_at")
        return wanted


Spec = Annotated[Union[FolderSpec, S3Spec, SqlSpec], Field(discriminator="kind")]
_SPEC = TypeAdapter(Spec)


class SourcesFileError(ValueError):
    """A sources file, or one source in it, that cannot be used; str() is one line naming the
    file, the source and the key."""


@dataclass
class Catalog:
    """What a sources file declares: the usable sources, and one message per unusable one
    (by source name, or `#<position>` when it has no usable name; "" for the whole file)."""

    path: Optional[Path] = None
    sources: list[FolderSpec | S3Spec | SqlSpec] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def landing(self) -> FolderSpec | S3Spec | None:
        return next((s for s in self.sources if not isinstance(s, SqlSpec)), None)

    @property
    def sql(self) -> list[SqlSpec]:
        return [s for s in self.sources if isinstance(s, SqlSpec)]

    def names(self) -> list[str]:
        return [s.name for s in self.sources] + [n for n in self.errors if n and not n.startswith("#")]


def reads(spec: SqlSpec) -> str:
    """What a SQL source reads, for the UI (never its URL, which may hold a password)."""
    what = f"table {spec.table}" if spec.table else "a query"
    kb = f"column {spec.knowledge_base.column}" if isinstance(spec.knowledge_base, ColumnRef) else spec.knowledge_base
    parts = [f"{what}: id {spec.id}, text {', '.join(spec.text)}, knowledge base {kb}"]
    if spec.metadata:
        parts.append(f"metadata {', '.join(spec.metadata)}")
    if spec.updated_at:
        parts.append(f"incremental by {spec.updated_at}")
    return "; ".join(parts)


def expand(value: str, environ: Mapping[str, str]) -> str:
    """`${VAR}` replaced from the environment: secrets stay out of the file."""
    def one(match: re.Match) -> str:
        name = match.group(1)
        if name not in environ:
            raise ValueError(f"environment variable {name} is not set")
        return environ[name]

    return _VAR_RE.sub(one, value)


def load(path: Path | str | None, *, environ: Mapping[str, str] | None = None) -> Catalog:
    """The sources `path` declares (an empty catalog for None). Never raises: problems are in
    `errors`, each one line."""
    if not path:
        return Catalog()
    import yaml

    path = Path(path)
    catalog = Catalog(path=path)
    where = f"RAG_SOURCES_FILE={path}"
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        catalog.errors[""] = f"{where}: cannot read the file ({exc.strerror or exc})"
        return catalog
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        catalog.errors[""] = f"{where}: not valid YAML{at} ({getattr(exc, 'problem', None) or exc})"
        return catalog
    if isinstance(document, Mapping) and set(document) <= {"sources"}:
        document = document.get("sources")
    if not isinstance(document, list):
        catalog.errors[""] = f"{where}: expected a list of sources under 'sources:'"
        return catalog
    environ = os.environ if environ is None else environ
    seen: set[str] = set()
    for position, entry in enumerate(document, start=1):
        label = entry.get("name") if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) else None
        key = label if label and NAME_RE.fullmatch(label) else f"#{position}"
        named = f"source '{label}'" if label else f"source #{position}"
        try:
            if not isinstance(entry, Mapping):
                raise SourcesFileError("expected a mapping with name, kind and the kind's keys")
            if label in seen:
                raise SourcesFileError("key 'name': declared twice")
            spec = _SPEC.validate_python(dict(entry))
            if isinstance(spec, SqlSpec):
                try:
                    spec = spec.model_copy(update={"url": expand(spec.url, environ)})
                except ValueError as exc:
                    raise SourcesFileError(f"key 'url': {exc}") from None
            if not isinstance(spec, SqlSpec) and catalog.landing is not None:
                raise SourcesFileError(
                    f"key 'kind': a second landing zone ({catalog.landing.name} is one); declare at most one folder or s3"
                )
        except ValidationError as exc:
            catalog.errors[key] = f"{where}: {named}: {_explain(exc)}"
            continue
        except SourcesFileError as exc:
            catalog.errors[key] = f"{where}: {named}: {exc}"
            continue
        seen.add(spec.name)
        catalog.sources.append(spec)
    return catalog


def _explain(exc: ValidationError) -> str:
    """pydantic's first error as `key 'text': <what is wrong>`."""
    errors = exc.errors()
    error = errors[0]
    # A tagged union puts the kind first in the location: not a key the user wrote.
    loc = [str(part) for part in error["loc"] if part not in ("folder", "s3", "sql")]
    if error["type"] == "union_tag_invalid" or (error["type"] == "union_tag_not_found"):
        loc, message = ["kind"], "expected one of folder, s3, sql"
    elif error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing"]
        if len(missing) > 1:
            rest = len(errors) - len(missing)
            return "missing keys: " + ", ".join(missing) + (f" ({rest} more problem(s))" if rest else "")
        message = "missing"
    else:
        message = error["msg"].removeprefix("Value error, ")
    key = loc[0] if loc else ""
    more = len(errors) - 1
    return (f"key '{key}': " if key else "") + message + (f" ({more} more problem(s))" if more else "")
