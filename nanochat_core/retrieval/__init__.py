"""Retrieval: tfidf, bm25 (bm25s), dense (sentence-transformers + FAISS), hybrid (RRF), and the
on-disk knowledge base. Heavy libraries (torch, faiss, bm25s) load on first use, not on import.

    from nanochat_core.retrieval import KnowledgeBase, make_retriever, Hit
"""
from nanochat_core.retrieval.base import Hit
from nanochat_core.retrieval.bm25 import BM25Retriever
from nanochat_core.retrieval.dense import DenseRetriever
from nanochat_core.retrieval.hybrid import HybridRetriever, rrf_fuse
from nanochat_core.retrieval.tfidf import TfidfRetriever

RETRIEVERS = {"tfidf": TfidfRetriever, "bm25": BM25Retriever, "dense": DenseRetriever}


def make_retriever(name, config=None):
    """A fresh, unindexed retriever. "hybrid" fuses bm25 and dense; config may hold
    {"bm25": {...}, "dense": {...}, "hybrid": {"weights": ..., "k_rrf": ...}}."""
    config = dict(config or {})
    if name == "hybrid":
        h = config.get("hybrid", {})
        names = h.get("retrievers", ["bm25", "dense"])
        return HybridRetriever({n: make_retriever(n, config) for n in names}, h.get("weights"),
                               h.get("k_rrf", 60), h.get("depth", 100))
    if name not in RETRIEVERS:
        raise ValueError(f"unknown retriever {name!r}; choose from {sorted(RETRIEVERS) + ['hybrid']}")
    return RETRIEVERS[name](**config.get(name, {}))


def load_retriever(name, dir, embedding_model=None):
    if name == "hybrid":
        return HybridRetriever.load(dir, embedding_model=embedding_model)
    if name == "dense":
        return DenseRetriever.load(dir, embedding_model=embedding_model)
    if name not in RETRIEVERS:
        raise ValueError(f"unknown retriever {name!r}; choose from {sorted(RETRIEVERS) + ['hybrid']}")
    return RETRIEVERS[name].load(dir)


# Last: kb imports make_retriever and load_retriever from this package.
from nanochat_core.retrieval.kb import KBError, KnowledgeBase

__all__ = [
    "RETRIEVERS",
    "BM25Retriever",
    "DenseRetriever",
    "Hit",
    "HybridRetriever",
    "KBError",
    "KnowledgeBase",
    "TfidfRetriever",
    "load_retriever",
    "make_retriever",
    "rrf_fuse",
]
