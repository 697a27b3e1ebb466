"""The few `qdrant_client.http.models` the pipeline uses, as plain dataclasses, for the embedded
store (core/qdrant_edge_store.py).

Importing qdrant-client builds ~350 pydantic models: 1.5-2 s on an idle core, 6-8 s on this
shared 2-core machine, most of a `rag-pipeline search` that otherwise needs ~1 s. The embedded
store needs none of it, so VectorStore builds its requests from whichever module fits the client
(`models_for`): these stand-ins for Qdrant Edge, qdrant-client's own models for a server.
Same class and field names, so EdgeClient reads either (tests and scripts hand it qm models).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional


class Distance(str, Enum):
    COSINE = "Cosine"
    EUCLID = "Euclid"
    DOT = "Dot"
    MANHATTAN = "Manhattan"


class Modifier(str, Enum):
    NONE = "none"
    IDF = "idf"


class PayloadSchemaType(str, Enum):
    KEYWORD = "keyword"
    INTEGER = "integer"
    FLOAT = "float"
    GEO = "geo"
    TEXT = "text"
    BOOL = "bool"
    DATETIME = "datetime"
    UUID = "uuid"


class Fusion(str, Enum):
    RRF = "rrf"
    DBSF = "dbsf"


class UpdateStatus(str, Enum):
    COMPLETED = "completed"


class CollectionStatus(str, Enum):
    GREEN = "green"


# -- requests -------------------------------------------------------------------------------


@dataclass
class VectorParams:
    size: int
    distance: Distance


@dataclass
class SparseVectorParams:
    modifier: Optional[Modifier] = None


@dataclass
class SparseVector:
    indices: list[int]
    values: list[float]


@dataclass
class MatchValue:
    value: Any


@dataclass
class MatchAny:
    any: list[Any]


@dataclass
class FieldCondition:
    key: str
    match: Any = None


@dataclass
class HasIdCondition:
    has_id: list[Any]


@dataclass
class Filter:
    must: Any = None
    should: Any = None
    must_not: Any = None
    min_should: Any = None


@dataclass
class FilterSelector:
    filter: Filter


@dataclass
class PointIdsList:
    points: list[Any]


@dataclass
class PayloadSelectorExclude:
    exclude: list[str]


@dataclass
class PayloadSelectorInclude:
    include: list[str]


@dataclass
class Batch:
    ids: list[Any]
    vectors: Any
    payloads: Optional[list[dict]] = None


@dataclass
class PointStruct:
    id: Any
    vector: Any
    payload: Optional[dict] = None


@dataclass
class FusionQuery:
    fusion: Fusion


@dataclass
class Prefetch:
    query: Any = None
    using: Optional[str] = None
    filter: Optional[Filter] = None
    limit: Optional[int] = None
    score_threshold: Optional[float] = None
    prefetch: Any = None


@dataclass
class QueryRequest:
    query: Any = None
    using: Optional[str] = None
    prefetch: Any = None
    filter: Optional[Filter] = None
    limit: Optional[int] = None
    offset: Optional[int] = None
    score_threshold: Optional[float] = None
    with_payload: Any = None
    with_vector: Any = None


@dataclass
class CreateAlias:
    collection_name: str
    alias_name: str


@dataclass
class CreateAliasOperation:
    create_alias: CreateAlias


@dataclass
class DeleteAlias:
    alias_name: str


@dataclass
class DeleteAliasOperation:
    delete_alias: DeleteAlias


# -- answers --------------------------------------------------------------------------------


@dataclass
class ScoredPoint:
    id: Any
    version: int
    score: float
    payload: Optional[dict] = None
    vector: Any = None


@dataclass
class Record:
    id: Any
    payload: Optional[dict] = None
    vector: Any = None


@dataclass
class QueryResponse:
    points: list[ScoredPoint]


@dataclass
class CountResult:
    count: int


@dataclass
class UpdateResult:
    operation_id: int
    status: UpdateStatus


@dataclass
class CollectionDescription:
    name: str


@dataclass
class CollectionsResponse:
    collections: list[CollectionDescription]


@dataclass
class AliasDescription:
    alias_name: str
    collection_name: str


@dataclass
class CollectionsAliasesResponse:
    aliases: list[AliasDescription]


@dataclass
class PayloadIndexInfo:
    data_type: PayloadSchemaType
    points: int


@dataclass
class CollectionParams:
    vectors: Any
    sparse_vectors: Optional[dict[str, SparseVectorParams]] = None


@dataclass
class CollectionConfig:
    params: CollectionParams


@dataclass
class CollectionInfo:
    status: CollectionStatus
    points_count: int
    segments_count: int
    indexed_vectors_count: int
    config: CollectionConfig
    payload_schema: dict[str, PayloadIndexInfo] = field(default_factory=dict)
