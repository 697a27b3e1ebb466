"""A local OpenAI-compatible embeddings endpoint that can inject faults.

Serves POST /v1/embeddings and GET /v1/models on 127.0.0.1. Vectors come from the offline
hashing embedder, so results are meaningful (lexical) and deterministic. Faults: status codes
(429 with Retry-After, 500, 503, 400, 401) at a rate or for the next N requests, hangs,
holding the next N requests until released (to reproduce a race at an exact moment), and
answers shaped otherwise (out of order, base64, not embeddings at all).
Run standalone: python -m rag_pipeline.devtools.embedding_server --port 8099
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from rag_pipeline.core.embedding import HashingEmbedder


@dataclass
class Faults:
    status_rate: float = 0.0
    statuses: tuple[int, ...] = (429, 500, 503)
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    next_statuses: list[int | None] = field(default_factory=list)  # None: serve this one normally
    refuse_marker: str | None = None  # 400 for any request with a text containing this
    # How a 200 is shaped: "in_order"; "shuffled" (items out of index order, as the API allows);
    # "base64" (vectors base64-encoded whatever was asked, as some proxies do); "not_embeddings".
    answer: str = "in_order"
    seed: int = 0


class EmbeddingServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, dimensions: int = 384, api_key: str | None = None) -> None:
        self.embedder = HashingEmbedder(dimensions=dimensions)
        self.faults = Faults()
        self.api_key = api_key
        self.lock = threading.Lock()
        self.requests = 0
        self.failures = 0
        self.texts: Counter[str] = Counter()
        self._rng = random.Random(0)
        self._held = threading.Condition(self.lock)
        self._release = threading.Event()
        self._release.set()
        self._hold_next = 0
        self.holding = 0
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "EmbeddingServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "EmbeddingServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(self, **kwargs: object) -> None:
        with self.lock:
            self.faults = Faults(**kwargs)  # type: ignore[arg-type]
            self._rng = random.Random(self.faults.seed)

    def hold_next(self, n: int = 1) -> None:
        """The next n embedding requests wait (inside the server) until `release()`."""
        with self.lock:
            self._hold_next = n
            self._release.clear()

    def wait_until_held(self, n: int = 1, timeout: float = 30.0) -> bool:
        with self._held:
            return self._held.wait_for(lambda: self.holding >= n, timeout)

    def release(self) -> None:
        with self.lock:
            self._hold_next = 0
            self.holding = 0
        self._release.set()

    def _maybe_hold(self) -> None:
        with self._held:
            if self._hold_next <= 0:
                return
            self._hold_next -= 1
            self.holding += 1
            self._held.notify_all()
        self._release.wait(timeout=300)

    def _pick_fault(self) -> tuple[int | None, bool]:
        with self.lock:
            self.requests += 1
            if self.faults.next_statuses:
                return self.faults.next_statuses.pop(0), False
            if self.faults.hang_rate and self._rng.random() < self.faults.hang_rate:
                return None, True
            if self.faults.status_rate and self._rng.random() < self.faults.status_rate:
                return self._rng.choice(self.faults.statuses), False
            return None, False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet test output
                pass

            def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "test-embed", "object": "model"}]})
                elif self.path.rstrip("/").endswith("/stats"):  # for a client in another process
                    with server.lock:
                        stats = {"requests": server.requests, "texts": sum(server.texts.values())}
                    self._send(200, stats)
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/embeddings"):
                    self._send(404, {"error": {"message": "not found"}})
                    return
                status, hang = server._pick_fault()  # counts the request
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                    return
                if hang:
                    time.sleep(server.faults.hang_seconds)
                    return
                if status is not None:
                    with server.lock:
                        server.failures += 1
                    headers = {"Retry-After": "0"} if status == 429 else {}
                    self._send(status, {"error": {"message": f"injected fault {status}", "type": "server_error"}}, headers)
                    return
                try:
                    body = json.loads(raw)
                    inputs = body["input"]
                except (ValueError, KeyError):
                    self._send(400, {"error": {"message": "body must be JSON with 'input'"}})
                    return
                if isinstance(inputs, str):
                    inputs = [inputs]
                marker = server.faults.refuse_marker
                if marker and any(marker in t for t in inputs if isinstance(t, str)):
                    self._send(400, {"error": {"message": "input is too long for this model", "type": "invalid_request_error"}})
                    return
                if not inputs or not all(isinstance(t, str) and t for t in inputs):
                    self._send(400, {"error": {"message": "input must be non-empty strings"}})
                    return
                server._maybe_hold()
                dims = body.get("dimensions") or server.embedder.dimensions
                embedder = server.embedder if dims == server.embedder.dimensions else HashingEmbedder(dimensions=int(dims))
                vectors = embedder.embed(inputs)
                with server.lock:
                    server.texts.update(inputs)
                    answer = server.faults.answer
                if answer == "not_embeddings":
                    self._send(200, {"object": "list", "results": "nothing here"})
                    return
                if answer == "base64" or body.get("encoding_format") == "base64":
                    vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
                items = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
                self._send(
                    200,
                    {
                        "object": "list",
                        "model": body.get("model", "test-embed"),
                        "data": items[::-1] if answer == "shuffled" else items,
                        "usage": {"prompt_tokens": sum(len(t.split()) for t in inputs), "total_tokens": 0},
                    },
                )

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--dimensions", type=int, default=384)
    args = parser.parse_args()
    server = EmbeddingServer(args.host, args.port, args.dimensions)
    print(f"serving OpenAI-compatible embeddings at {server.base_url}", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
