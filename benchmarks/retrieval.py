"""Retrieval benchmark on BEIR SciFact: build time, queries/s, peak memory, nDCG@10.

    python -m benchmarks.retrieval [--data DIR] [--out benchmarks/results/retrieval.json] [--no-dense]

BM25 speed is a ratio taken in one process on one machine: ours (bm25s) vs rank_bm25.BM25Okapi,
both in the same formula (our rank-bm25-equivalent configuration), same tokens, top 10.
Peak memory is the process's peak resident set size (resource.getrusage ru_maxrss), read after
each phase; it is cumulative, so each value includes everything loaded before it.
"""
import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import reference_data_dir, report_path
from nanochat_core.common import atomic_write_json, offline_env
from nanochat_core.metrics import evaluate_run
from nanochat_core.retrieval import BM25Retriever, DenseRetriever, HybridRetriever, TfidfRetriever
from nanochat_core.retrieval.base import doc_text, tokenize
from nanochat_core.retrieval.beir import load_beir
from nanochat_core.retrieval.bm25 import RANK_BM25_OKAPI


def peak_rss_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def timed(fn, min_seconds=1.0):
    """Runs fn until min_seconds have passed (at least once); returns (result, seconds per call)."""
    n, t0 = 0, time.perf_counter()
    while True:
        out = fn()
        n += 1
        if time.perf_counter() - t0 >= min_seconds:
            return out, (time.perf_counter() - t0) / n


def ndcg10(results, qids, qrels):
    return round(evaluate_run({q: [h.doc_id for h in hits] for q, hits in zip(qids, results)}, qrels,
                              metrics=("ndcg@10",))["ndcg@10"], 4)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(reference_data_dir() / "beir" / "scifact"))
    ap.add_argument("--out", default=str(report_path("retrieval")))
    ap.add_argument("--no-dense", action="store_true", help="skip dense and hybrid (encoding takes minutes on CPU)")
    args = ap.parse_args(argv)
    offline_env()
    if not Path(args.data).exists():
        sys.exit(f"no BEIR data at {args.data}; set NANOCHAT_REFERENCE_DATA or pass --data")
    docs, queries, qrels = load_beir(args.data)
    qids = list(queries)
    qtexts = [queries[q] for q in qids]
    out = {"dataset": Path(args.data).name, "num_docs": len(docs), "num_queries": len(qids),
           "peak_memory_method": "resource.getrusage(RUSAGE_SELF).ru_maxrss, process peak RSS after each phase (MB)",
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
           "peak_rss_mb": {"start": peak_rss_mb()}, "build_s": {}, "queries_per_s": {}, "ndcg@10": {}}

    # --- BM25: ours (bm25s) vs rank-bm25, same formula, same tokens
    from rank_bm25 import BM25Okapi
    t = time.perf_counter()
    ours = BM25Retriever(**RANK_BM25_OKAPI).index(docs)
    out["build_s"]["bm25_rank_bm25_config"] = round(time.perf_counter() - t, 3)
    res_ours, per = timed(lambda: ours.search(qtexts, k=10))
    qps_ours = len(qtexts) / per
    t = time.perf_counter()
    ref = BM25Okapi([tokenize(doc_text(d)) for d in docs], k1=1.5, b=0.75)
    out["build_s"]["rank_bm25"] = round(time.perf_counter() - t, 3)
    ids = [d["id"] for d in docs]

    def rank_bm25_search():
        res = []
        for q in qtexts:
            s = ref.get_scores(tokenize(q))
            top = np.argpartition(-s, 10)[:10]
            res.append([ids[i] for i in top[np.argsort(-s[top], kind="stable")] if s[i] > 0])
        return res
    res_ref, per_ref = timed(rank_bm25_search, min_seconds=0)
    qps_ref = len(qtexts) / per_ref
    agree = np.mean([{h.doc_id for h in a} == set(b) for a, b in zip(res_ours, res_ref)])
    out["bm25_vs_rank_bm25"] = {"ours_qps": round(qps_ours, 1), "rank_bm25_qps": round(qps_ref, 2),
                                "speedup": round(qps_ours / qps_ref, 1), "top10_same_set_fraction": round(float(agree), 4),
                                "config": RANK_BM25_OKAPI}
    out["peak_rss_mb"]["after_bm25"] = peak_rss_mb()
    print(f"bm25: ours {qps_ours:.0f} q/s, rank-bm25 {qps_ref:.1f} q/s, x{qps_ours / qps_ref:.0f}", flush=True)

    # --- default-config BM25 and TF-IDF: build time, q/s, nDCG@10
    for name, cls in (("bm25", BM25Retriever), ("tfidf", TfidfRetriever)):
        t = time.perf_counter()
        r = cls().index(docs)
        out["build_s"][name] = round(time.perf_counter() - t, 3)
        res, per = timed(lambda r=r: r.search(qtexts, k=100))
        out["queries_per_s"][name] = round(len(qtexts) / per, 1)
        out["ndcg@10"][name] = ndcg10(res, qids, qrels)
        out["peak_rss_mb"][f"after_{name}"] = peak_rss_mb()
        if name == "bm25":
            bm25 = r
        print(f"{name}: build {out['build_s'][name]} s, {out['queries_per_s'][name]} q/s, nDCG@10 {out['ndcg@10'][name]}", flush=True)

    if not args.no_dense:
        import torch
        out["machine"]["torch_threads"] = torch.get_num_threads()
        dense = DenseRetriever()
        t = time.perf_counter()
        _ = dense.encoder  # model load, timed apart from encoding
        out["dense_model_load_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        dense.index(docs)
        out["build_s"]["dense"] = round(time.perf_counter() - t, 3)
        out["dense_encode_docs_per_s"] = round(len(docs) / out["build_s"]["dense"], 1)
        res, per = timed(lambda: dense.search(qtexts, k=100))
        out["queries_per_s"]["dense"] = round(len(qtexts) / per, 1)
        q = dense.encode(qtexts, progress=False)
        _, per_faiss = timed(lambda: dense.faiss_index.search(q, 100))
        out["queries_per_s"]["dense_faiss_only"] = round(len(qtexts) / per_faiss, 1)
        out["ndcg@10"]["dense"] = ndcg10(res, qids, qrels)
        out["peak_rss_mb"]["after_dense"] = peak_rss_mb()
        hybrid = HybridRetriever({"bm25": bm25, "dense": dense})
        res, per = timed(lambda: hybrid.search(qtexts, k=100))
        out["queries_per_s"]["hybrid"] = round(len(qtexts) / per, 1)
        out["ndcg@10"]["hybrid"] = ndcg10(res, qids, qrels)
        print(f"dense: encode {out['dense_encode_docs_per_s']} docs/s, {out['queries_per_s']['dense']} q/s, "
              f"nDCG@10 {out['ndcg@10']['dense']}; hybrid nDCG@10 {out['ndcg@10']['hybrid']}", flush=True)

    out["peak_rss_mb"]["end"] = peak_rss_mb()
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
