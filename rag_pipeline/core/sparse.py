"""Keyword vectors: BM25 term weights as Qdrant sparse vectors, computed offline.

Dense vectors miss exact identifiers (an error code, a ticket id, a flag name); a keyword
vector beside each dense one catches them. A chunk's vector holds, per distinct term, BM25's
term-frequency part, tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / AVG_TERMS)); the collection's
sparse vector carries Qdrant's IDF modifier, so the corpus statistics (document frequency per
term) stay in Qdrant, current as points come and go, and nothing here needs the corpus. A query
vector weighs each of its distinct terms 1: Qdrant multiplies by the term's IDF.

Terms are hashed to uint32 indices (no vocabulary to store or ship; a collision merges two rare
terms, which costs a little precision and nothing else). No model, no download: the tokenizer
is a regular expression, a short stop list and a light suffix stripper (plural `s`), because a
stemmer package would be a dependency for a few points of recall on paraphrases, which the dense
vector covers anyway.

Changing anything that alters the terms or weights of a text changes `KEYWORD_VERSION`, which is
part of the index configuration's fingerprint: a new generation is built behind the alias.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections import Counter
from dataclasses import dataclass

KEYWORD_VERSION = "bm25-v1"
# The name of the sparse vector in a collection that has one.
SPARSE_VECTOR = "bm25"
K1 = 1.2
B = 0.75
# The average chunk length in terms that BM25's length normalisation compares against. A fixed
# figure (the chunker's 400 cl100k tokens make ~230 terms of prose after stop words): a corpus
# average would change every stored vector whenever the corpus changed.
AVG_TERMS = 230.0

# Words joined by '-', '_', '.', '/', ':' or '#' are one identifier (ERR-4012, RAG_SEARCH_MODE,
# v1.2.3, api/v2, INC#2231): it is a term itself, and so is each of its parts, so that both
# "ERR-4012" and "error 4012" find it.
_TOKEN = re.compile(r"[^\W_]+(?:[-_.:/#][^\W_]+)*", re.UNICODE)
_PART = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves""".split()
)


def _stem(word: str) -> str:
    # Plural and possessive only: "policies" -> "policy", "days" -> "day", "process" unchanged.
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def terms(text: str) -> list[str]:
    """The text's terms, in order, repeats kept (their count is the term frequency)."""
    out: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        out.extend(_token_terms(token))
    return out


# A token's terms and a term's index are remembered: prose repeats its words, and splitting,
# stemming and hashing each occurrence was most of the keyword vectors' time (1.0 s for 5,300
# chunks, 0.5 s remembered). Least recently used first out, so a stream of new tokens (ids,
# hashes) costs a bounded few MB, not one entry per distinct token of the corpus.
MEMO_SIZE = 1 << 16


@functools.lru_cache(maxsize=MEMO_SIZE)
def _token_terms(token: str) -> tuple[str, ...]:
    parts = _PART.findall(token)
    if len(parts) > 1:
        return (token, *(_stem(p) for p in parts if p not in _STOP))
    return () if token in _STOP else (_stem(token),)


@functools.lru_cache(maxsize=MEMO_SIZE)
def term_index(term: str) -> int:
    """The term's sparse index: crc32 is stable across processes and versions of Python (the
    built-in `hash` of a str is not)."""
    return zlib.crc32(term.encode("utf-8"))


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]

    def __len__(self) -> int:
        return len(self.indices)


def _merge(weights: dict[int, float]) -> SparseVector:
    ordered = sorted(weights.items())
    return SparseVector([i for i, _ in ordered], [w for _, w in ordered])


def document_vector(text: str) -> SparseVector:
    """BM25's term-frequency part for each distinct term of a chunk."""
    counts = Counter(terms(text))
    length = sum(counts.values())
    norm = K1 * (1 - B + B * length / AVG_TERMS)
    weights: dict[int, float] = {}
    for term, tf in counts.items():
        index = term_index(term)
        # Two terms hashed to one index add up, as if they were one term.
        weights[index] = weights.get(index, 0.0) + tf * (K1 + 1) / (tf + norm)
    return _merge(weights)


def query_vector(text: str) -> SparseVector:
    """Each distinct query term once, weight 1 (Qdrant applies the IDF)."""
    return _merge({term_index(t): 1.0 for t in set(terms(text))})
