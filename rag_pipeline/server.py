"""`rag-pipeline serve`: the search API over HTTP (Starlette on uvicorn, both already installed
with dagster-webserver).

    POST /search    {"query": ..., "k": 5, "mode": "hybrid", "kb": ..., "path_prefix": ...,
                     "file_types": [...], "metadata": {...}, "context": 0}  -> hits with citations
    GET  /healthz   the store answers, and which collection search reads
    GET  /openapi.json

One `Searcher` for the process (opened at start-up, closed at shutdown): one store client, one
database engine, one embedder, no per-request open. Bound to 127.0.0.1 unless RAG_SERVE_HOST
says otherwise; with RAG_SERVE_TOKEN set, POST /search needs `Authorization: Bearer <token>`
(health stays open, for load balancers and compose healthchecks).
"""

from __future__ import annotations

import contextlib
import hmac
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rag_pipeline import __version__
from rag_pipeline.core.vectorstore import MODES

if TYPE_CHECKING:
    from rag_pipeline.core.search import Searcher
    from rag_pipeline.settings import Settings

MAX_K = 100
MAX_CONTEXT = 10

_HIT = {
    "type": "object",
    "properties": {
        "document_id": {"type": "string"},
        "text": {"type": "string"},
        "score": {"type": "number", "description": "the score of the mode searched (reciprocal-rank fusion for hybrid)"},
        "scores": {"type": "object", "additionalProperties": {"type": "number"},
                   "description": "per mode that ranked the hit: hybrid, dense, keyword"},
        "citation": {
            "type": "object",
            "properties": {
                "knowledge_base": {"type": "string"}, "path": {"type": "string"},
                "page": {"type": ["integer", "null"]}, "heading": {"type": ["string", "null"]},
                "chunk_index": {"type": "integer"},
                "start": {"type": ["integer", "null"], "description": "offset in the document's extracted text"},
                "end": {"type": ["integer", "null"]},
                "version": {"type": "string", "description": "sha256 of the file's bytes"},
                "indexed_at": {"type": ["string", "null"], "format": "date-time"},
            },
        },
        "file_type": {"type": ["string", "null"]},
        "title": {"type": ["string", "null"]},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "context": {"type": ["string", "null"], "description": "with `context`: the hit and its neighbours, merged"},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "rag_pipeline search", "version": __version__},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/search": {
            "post": {
                "summary": "The chunks that best answer a query, with citations",
                "security": [{"bearer": []}, {}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["query"],
                    "properties": {
                        "query": {"type": "string", "minLength": 1},
                        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 5},
                        "mode": {"type": "string", "enum": list(MODES), "description": "default: RAG_SEARCH_MODE"},
                        "kb": {"type": "string", "description": "only this knowledge base"},
                        "path_prefix": {"type": "string", "description": "only this folder or file"},
                        "file_types": {"type": "array", "items": {"type": "string"}},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        "context": {"type": "integer", "minimum": 0, "maximum": MAX_CONTEXT, "default": 0,
                                    "description": "neighbouring chunks on each side merged into `context`"},
                        "context_tokens": {"type": "integer", "minimum": 1,
                                           "description": "token budget of all contexts together"},
                    },
                }}}},
                "responses": {
                    "200": {"description": "hits, best first", "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {
                            "query": {"type": "string"}, "mode": {"type": "string"},
                            "collection": {"type": ["string", "null"]}, "took_ms": {"type": "number"},
                            "hits": {"type": "array", "items": _HIT},
                        },
                    }}}},
                    "400": {"description": "a malformed request; `error` says what"},
                    "401": {"description": "RAG_SERVE_TOKEN is set and the bearer token is missing or wrong"},
                },
            }
        },
        "/healthz": {"get": {"summary": "the store answers", "responses": {
            "200": {"description": "ok, and the collection search reads"},
            "503": {"description": "the store or database does not answer"},
        }}},
    },
}


class BadRequest(ValueError):
    pass


def _options(body: Any) -> dict[str, Any]:
    """The search options of a request body, checked (a message naming the field otherwise)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise BadRequest("query: a non-empty string is required")
    k = body.get("k", 5)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise BadRequest(f"k: a whole number from 1 to {MAX_K}")
    mode = body.get("mode")
    if mode is not None and mode not in MODES:
        raise BadRequest(f"mode: one of {', '.join(MODES)}")
    context = body.get("context", 0)
    if not isinstance(context, int) or isinstance(context, bool) or not 0 <= context <= MAX_CONTEXT:
        raise BadRequest(f"context: a whole number from 0 to {MAX_CONTEXT}")
    budget = body.get("context_tokens")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        raise BadRequest("context_tokens: a whole number of at least 1")
    for name in ("kb", "path_prefix"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise BadRequest(f"{name}: a string")
    types = body.get("file_types") or []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise BadRequest("file_types: a list of strings")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadRequest("metadata: an object of strings")
    options = dict(
        k=k, mode=mode, knowledge_base=body.get("kb"), path_prefix=body.get("path_prefix"),
        file_types=types, metadata=metadata, context=context,
    )
    if budget is not None:
        options["context_tokens"] = budget
    return {"query": query, **options}


def create_app(*, open_searcher: Callable[[], Searcher], token: str | None = None) -> Starlette:
    """The ASGI app; `open_searcher` runs once, at start-up."""
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["searcher"] = await run_in_threadpool(open_searcher)
        try:
            yield
        finally:
            state.pop("searcher").close()

    def authorized(request: Request) -> bool:
        if not token:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    async def search(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"error": "a bearer token is required (RAG_SERVE_TOKEN)"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        try:
            options = _options(await request.json())
        except ValueError as exc:  # BadRequest, and JSON that does not parse
            return JSONResponse({"error": str(exc) if isinstance(exc, BadRequest) else "the body is not JSON"},
                                status_code=400)
        started = time.perf_counter()
        searcher: Searcher = state["searcher"]
        result = await run_in_threadpool(lambda: searcher.search(options.pop("query"), **options))
        payload = result.to_dict()
        payload["took_ms"] = round(1000 * (time.perf_counter() - started), 2)
        return JSONResponse(payload)

    async def healthz(request: Request) -> JSONResponse:
        searcher: Searcher = state["searcher"]
        try:
            collection = await run_in_threadpool(searcher.serving_collection)
        except Exception as exc:  # noqa: BLE001 - any failure of the store is "not healthy"
            return JSONResponse({"status": "unavailable", "error": str(exc).splitlines()[0][:300]}, status_code=503)
        return JSONResponse({"status": "ok", "collection": collection})

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(OPENAPI)

    return Starlette(
        routes=[
            Route("/search", search, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def app_from_settings(settings: Settings) -> Starlette:
    from rag_pipeline.core.search import Searcher

    return create_app(open_searcher=lambda: Searcher.from_settings(settings), token=settings.serve_token)


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> int:
    import uvicorn

    uvicorn.run(
        app_from_settings(settings), host=host or settings.serve_host, port=port or settings.serve_port,
        log_level="info", access_log=False,
    )
    return 0
