"""What every retriever shares: the Hit type, the protocol, text and tokenization, top-k.

The protocol (duck-typed, no base class to inherit):
    r = Retriever(**config)       # config is JSON-able; r.config() returns it
    r.index(docs)                 # docs: list of {"id", "title", "text", ...}
    r.search(queries, k) -> [[Hit(doc_id, score), ...] best first, one list per query]
    r.save(dir); r = Retriever.load(dir)
"""
import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nanochat_core.common import atomic_write_json


class Hit(NamedTuple):
    doc_id: str
    score: float


# Lucene's English stop words (what Anserini's BM25 uses); kept here so tfidf needs no bm25s.
STOPWORDS_EN = frozenset([
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not",
    "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was",
    "will", "with"])
# Runs of word characters, single ones included: on SciFact the lone digits and letters of
# claims like "1/2000" or "vitamin D" are worth +0.007 nDCG@10 over scikit-learn's 2+ rule.
TOKEN_RE = re.compile(r"(?u)\w+")


def settings(name, defaults, given):
    """A retriever's settings: its defaults updated with `given`; an unknown key is an error."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {name} settings {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **given}


def doc_text(doc):
    # BEIR's convention for both lexical and dense models: title, a space, then the text.
    title = doc.get("title") or ""
    return f"{title} {doc['text']}" if title else doc["text"]


def tokenize(text, lower=True, stopwords=True):
    if lower:
        text = text.lower()
    toks = TOKEN_RE.findall(text)
    return [t for t in toks if t not in STOPWORDS_EN] if stopwords else toks


def topk_hits(scores, ids, k, drop_nonpositive=False):
    """Top k of one score vector as Hits, best first; ties broken by index (deterministic)."""
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return []
    if k < n:
        # Keep every doc tied with the k-th score so the tie-break below decides, not partition order.
        kth = np.partition(scores, n - k)[n - k]
        idx = np.flatnonzero(scores >= kth)
    else:
        idx = np.arange(n)
    # Deterministic order: score descending, then position ascending.
    idx = idx[np.lexsort((idx, -scores[idx]))][:k]
    return [Hit(ids[i], float(scores[i])) for i in idx if not (drop_nonpositive and scores[i] <= 0)]


def read_json(path, what):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} file {path} is corrupted ({e}); rebuild it") from e


def save_ids(dir, ids, config):
    atomic_write_json(Path(dir) / "ids.json", {"config": config, "ids": list(ids)}, indent=None)


def load_ids(dir):
    obj = read_json(Path(dir) / "ids.json", "retriever ids")
    return obj["ids"], obj["config"]
