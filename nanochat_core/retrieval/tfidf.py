"""TF-IDF with cosine similarity: the "simple" retriever, numpy and scipy only.

weight(t, d) = (1 + log tf) * idf(t), idf(t) = log((1 + N) / (1 + df)) + 1 (scikit-learn's
smooth idf), rows L2-normalized; a query is weighted the same way and scored by dot product.
"""
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from nanochat_core.common import atomic_write_text
from nanochat_core.retrieval.base import doc_text, load_ids, read_json, save_ids, settings, tokenize, topk_hits

DEFAULTS = {"lower": True, "stopwords": True, "sublinear_tf": True}


class TfidfRetriever:
    name = "tfidf"

    def __init__(self, **config):
        self.cfg = settings("tfidf", DEFAULTS, config)
        self.ids, self.vocab, self.idf, self.matrix = [], {}, None, None

    def config(self):
        return dict(self.cfg)

    def _weigh(self, token_lists, grow_vocab):
        rows, cols, vals = [], [], []
        for i, toks in enumerate(token_lists):
            counts = {}
            for t in toks:
                j = self.vocab.setdefault(t, len(self.vocab)) if grow_vocab else self.vocab.get(t)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            rows += [i] * len(counts)
            cols += list(counts)
            vals += list(counts.values())
        tf = np.asarray(vals, dtype=np.float64)
        if self.cfg["sublinear_tf"]:
            tf = 1.0 + np.log(tf)
        return sp.csr_matrix((tf, (rows, cols)), shape=(len(token_lists), len(self.vocab)))

    def _tokens(self, texts):
        return [tokenize(t, lower=self.cfg["lower"], stopwords=self.cfg["stopwords"]) for t in texts]

    @staticmethod
    def _l2_normalize(m):
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sp.diags(1.0 / norms) @ m

    def index(self, docs):
        self.vocab = {}
        tf = self._weigh(self._tokens([doc_text(d) for d in docs]), grow_vocab=True)
        df = np.bincount(tf.indices, minlength=len(self.vocab))
        n = tf.shape[0]
        self.idf = np.log((1 + n) / (1 + df)) + 1.0
        self.matrix = self._l2_normalize(tf @ sp.diags(self.idf)).tocsr().astype(np.float32)
        self.ids = [d["id"] for d in docs]
        return self

    def search(self, queries, k=10):
        if self.matrix is None:
            raise ValueError("tfidf retriever has no index; call index(docs) or load(dir) first")
        q = self._l2_normalize(self._weigh(self._tokens(queries), grow_vocab=False) @ sp.diags(self.idf))
        scores = (q.astype(np.float32) @ self.matrix.T).toarray()  # (num_queries, num_docs)
        return [topk_hits(s, self.ids, k, drop_nonpositive=True) for s in scores]

    def save(self, dir):
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        # scipy's npz holds only numeric arrays and load_npz refuses pickles.
        sp.save_npz(dir / "matrix.npz", self.matrix)
        np.save(dir / "idf.npy", self.idf, allow_pickle=False)
        atomic_write_text(dir / "vocab.json", json.dumps(self.vocab, ensure_ascii=False))
        save_ids(dir, self.ids, self.cfg)

    @classmethod
    def load(cls, dir):
        dir = Path(dir)
        ids, cfg = load_ids(dir)
        r = cls(**cfg)
        r.vocab = read_json(dir / "vocab.json", "tfidf vocabulary")
        r.idf = np.load(dir / "idf.npy", allow_pickle=False)
        r.matrix = sp.load_npz(dir / "matrix.npz").tocsr()
        if r.matrix.shape != (len(ids), len(r.vocab)) or len(r.idf) != len(r.vocab):
            raise ValueError(f"tfidf index at {dir} does not match its ids/vocabulary; rebuild it")
        r.ids = ids
        return r
