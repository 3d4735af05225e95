"""Hybrid retrieval: weighted reciprocal-rank fusion (Cormack et al. 2009) of any retrievers.

score(d) = sum over retrievers r of weight_r / (k_rrf + rank_r(d)), rank starting at 1.
RRF ignores the raw scores, so BM25's unbounded scores and cosine similarities mix without
calibration. Each retriever contributes its top `depth` hits.
"""
from pathlib import Path

from nanochat_core.common import atomic_write_json
from nanochat_core.retrieval.base import Hit, read_json


def rrf_fuse(result_lists, weights, k_rrf=60, k=10):
    """result_lists: one [Hit, ...] per retriever (best first) -> fused top k Hits."""
    scores, first_seen = {}, {}
    for hits, w in zip(result_lists, weights):
        for rank, h in enumerate(hits, start=1):
            scores[h.doc_id] = scores.get(h.doc_id, 0.0) + w / (k_rrf + rank)
            first_seen.setdefault(h.doc_id, len(first_seen))
    # Ties (e.g. rank 3 in one list vs rank 3 in the other) go to the first retriever's doc.
    order = sorted(scores, key=lambda d: (-scores[d], first_seen[d]))
    return [Hit(d, scores[d]) for d in order[:k]]


class HybridRetriever:
    name = "hybrid"

    def __init__(self, retrievers, weights=None, k_rrf=60, depth=100):
        """retrievers: {name: retriever}; weights: {name: float}, 1.0 for any not given."""
        if not retrievers:
            raise ValueError("hybrid needs at least one retriever to fuse")
        self.retrievers = dict(retrievers)
        weights = weights or {}
        unknown = set(weights) - set(self.retrievers)
        if unknown:
            raise ValueError(f"hybrid weights name {sorted(unknown)}, which are not among its retrievers "
                             f"{sorted(self.retrievers)}")
        self.weights = {n: float(weights.get(n, 1.0)) for n in self.retrievers}
        self.k_rrf, self.depth = k_rrf, depth

    def config(self):
        return {"retrievers": list(self.retrievers), "weights": self.weights, "k_rrf": self.k_rrf, "depth": self.depth}

    def index(self, docs):
        for r in self.retrievers.values():
            r.index(docs)
        return self

    def search(self, queries, k=10):
        depth = max(k, self.depth)
        per = [r.search(queries, depth) for r in self.retrievers.values()]
        w = list(self.weights.values())
        return [rrf_fuse([p[i] for p in per], w, self.k_rrf, k) for i in range(len(queries))]

    def save(self, dir):
        dir = Path(dir)
        for name, r in self.retrievers.items():
            r.save(dir / name)
        atomic_write_json(dir / "hybrid.json", self.config())

    @classmethod
    def load(cls, dir, **load_kwargs):
        from nanochat_core.retrieval import load_retriever
        dir = Path(dir)
        cfg = read_json(dir / "hybrid.json", "hybrid config")
        children = {n: load_retriever(n, dir / n, **load_kwargs) for n in cfg["retrievers"]}
        return cls(children, cfg["weights"], cfg["k_rrf"], cfg["depth"])
