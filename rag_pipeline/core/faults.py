"""Whose fault a failure is: the infrastructure's (wait and retry) or the document's (park it)."""

from __future__ import annotations

import openai
import sqlalchemy.exc

from rag_pipeline.core.embedding import EndpointError
from rag_pipeline.core.sources import SourceMisconfigured, SourceUnavailable
from rag_pipeline.core.vectorstore import VectorStoreError

_INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    EndpointError,  # credentials, model, width: fixed by an operator, not by the document
    openai.APIConnectionError,  # includes APITimeoutError
    openai.InternalServerError,
    openai.RateLimitError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    VectorStoreError,
    # The landing zone: unreachable or throttling after the client's retries, or a setting to
    # fix (credentials, bucket). Never the document's fault.
    SourceUnavailable,
    SourceMisconfigured,
    ConnectionError,
    TimeoutError,
)


def is_infrastructure(exc: BaseException) -> bool:
    if isinstance(exc, _INFRASTRUCTURE):
        return True
    # qdrant-client surfaces an unreachable or failing server as these.
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, ResponseHandlingException):
        return True
    return isinstance(exc, UnexpectedResponse) and (exc.status_code or 0) >= 500


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
