"""BM25 on bm25s: the scores of every (term, doc) pair are computed at index time into a
sparse matrix, so a query is a sum of a few sparse columns (no Python loop over docs).

Defaults: k1=1.2, b=0.75 (Robertson's classic values), Lucene's variant and stop words,
lowercase, no stemming (no stemmer is a dependency). On SciFact they give nDCG@10 0.666
(published 0.665); Anserini's k1=0.9, b=0.4 gives 0.664 here.

The rank-bm25-equivalent configuration is method="atire", idf_method="robertson": the formula
of rank_bm25.BM25Okapi, idf = log((N - df + 0.5) / (df + 0.5)) and
tf part = tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)). The one difference: a term in more
than half of the docs has a negative idf, which rank-bm25 replaces with 0.25 x the mean idf
and bm25s with 0.
"""
import logging
import os
from pathlib import Path

from nanochat_core.retrieval.base import doc_text, load_ids, save_ids, settings, tokenize, topk_hits


def _bm25s():
    """bm25s, imported so that it cannot take the GPU. When JAX is installed, importing bm25s
    initializes JAX's default backend, and on a CUDA machine that preallocates 75% of the GPU
    in every process (seen on an H200: 15 of 18 training processes died of CUDA OOM). Our code
    never uses JAX, so it stays on the CPU unless the user chose a platform."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import bm25s
    return bm25s


DEFAULTS = {"k1": 1.2, "b": 0.75, "method": "lucene", "idf_method": None, "delta": 0.5,
            "lower": True, "stopwords": True, "dtype": "float32"}
# rank_bm25.BM25Okapi's formula and its default k1, b (see the docstring for the one difference).
RANK_BM25_OKAPI = {"method": "atire", "idf_method": "robertson", "k1": 1.5, "b": 0.75}


class BM25Retriever:
    name = "bm25"

    def __init__(self, **config):
        self.cfg = settings("bm25", DEFAULTS, config)
        self.ids, self.bm25 = [], None

    def config(self):
        return dict(self.cfg)

    def _tokenize(self, text):
        return tokenize(text, lower=self.cfg["lower"], stopwords=self.cfg["stopwords"])

    def index(self, docs):
        bm25s = _bm25s()
        # Our own vocabulary, in order of first appearance, so token ids are reproducible
        # across processes (bm25s's own builder goes through a set).
        vocab, corpus_ids = {}, []
        for d in docs:
            corpus_ids.append([vocab.setdefault(t, len(vocab)) for t in self._tokenize(doc_text(d))])
        c = self.cfg
        self.bm25 = bm25s.BM25(k1=c["k1"], b=c["b"], delta=c["delta"], method=c["method"],
                               idf_method=c["idf_method"], dtype=c["dtype"])
        self.bm25.index((corpus_ids, vocab), show_progress=False)
        self.ids = [d["id"] for d in docs]
        return self

    def search(self, queries, k=10):
        if self.bm25 is None:
            raise ValueError("bm25 retriever has no index; call index(docs) or load(dir) first")
        out = []
        for q in queries:
            tok_ids = self.bm25.get_tokens_ids(self._tokenize(q))
            if not tok_ids:
                out.append([])  # no query word is in the corpus: nothing matches
                continue
            scores = self.bm25.get_scores_from_ids(tok_ids)
            # A doc that shares no word with the query is not a hit, whatever k asks for.
            out.append(topk_hits(scores, self.ids, k, drop_nonpositive=True))
        return out

    def save(self, dir):
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        # bm25s writes numeric .npy arrays (allow_pickle=False) and JSON vocab/params.
        self.bm25.save(str(dir), allow_pickle=False, show_progress=False)
        save_ids(dir, self.ids, self.cfg)

    @classmethod
    def load(cls, dir):
        bm25s = _bm25s()
        ids, cfg = load_ids(dir)
        r = cls(**cfg)
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        r.bm25 = bm25s.BM25.load(str(dir), allow_pickle=False, mmap=False, show_progress=False)
        if r.bm25.scores["num_docs"] != len(ids):
            raise ValueError(f"bm25 index at {dir} has {r.bm25.scores['num_docs']} docs but ids.json lists "
                             f"{len(ids)}; the index is corrupted, rebuild it")
        r.ids = ids
        return r

