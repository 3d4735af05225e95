"""Metrics: retrieval (trec_eval definitions, as BEIR reports them) and QA (SQuAD's EM/F1).

Retrieval functions take `ranked`, a list of doc ids best first, and `qrels`, a dict
doc_id -> graded relevance (int). A doc counts as relevant when its grade is > 0
(trec_eval's default relevance level 1). Unjudged docs are not relevant.
"""
import collections
import math
import re
import string


def _relevant(qrels):
    return {d for d, r in qrels.items() if r > 0}


def recall_at_k(ranked, qrels, k):
    """Fraction of the relevant docs found in the top k (0 when the query has none)."""
    rel = _relevant(qrels)
    if not rel:
        return 0.0
    return len(rel.intersection(ranked[:k])) / len(rel)


def precision_at_k(ranked, qrels, k):
    """Relevant docs in the top k, divided by k (trec_eval P_k: a short list is not rewarded)."""
    rel = _relevant(qrels)
    return sum(1 for d in ranked[:k] if d in rel) / k


def mrr_at_k(ranked, qrels, k):
    """1/rank of the first relevant doc within the top k, else 0."""
    rel = _relevant(qrels)
    for i, d in enumerate(ranked[:k]):
        if d in rel:
            return 1.0 / (i + 1)
    return 0.0


def ndcg_at_k(ranked, qrels, k):
    """nDCG@k with linear graded gain: sum rel_i / log2(i + 1), normalized by the ideal ranking
    of all judged docs (trec_eval ndcg_cut, which is what BEIR's published numbers use)."""
    dcg = sum(qrels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if qrels.get(d, 0) > 0)
    ideal = sorted((r for r in qrels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


RETRIEVAL_METRICS = {"ndcg": ndcg_at_k, "recall": recall_at_k, "precision": precision_at_k, "mrr": mrr_at_k}


def evaluate_run(run, qrels, metrics=("ndcg@10", "recall@100", "mrr@10")):
    """Mean of each metric over the queries in `qrels` that have a relevant doc (a query
    missing from `run` scores 0, so a retriever cannot gain by returning nothing).

    run: {query_id: [doc_id, ...] best first}; qrels: {query_id: {doc_id: grade}}.
    Returns {"ndcg@10": ..., ..., "num_queries": n}.
    """
    out = {}
    qids = [q for q in qrels if _relevant(qrels[q])]
    for m in metrics:
        name, k = m.split("@")
        fn = RETRIEVAL_METRICS[name]
        vals = [fn(list(run.get(q, [])), qrels[q], int(k)) for q in qids]
        out[m] = sum(vals) / len(vals) if vals else 0.0
    out["num_queries"] = len(qids)
    return out


# ---------------------------------------------------------------------------------------
# QA: SQuAD v1.1/v2.0 official normalization, exact match and token F1, max over golds.

def normalize_answer(s):
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _golds(golds):
    golds = [golds] if isinstance(golds, str) else list(golds)
    # SQuAD 2.0: an unanswerable question has no gold answers; the right answer is "".
    return golds if golds else [""]


def exact_match(pred, golds):
    """1.0 if the normalized prediction equals any normalized gold answer, else 0.0."""
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _golds(golds)))


def _f1_one(pred, gold):
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        # SQuAD 2.0: when either is empty (abstention), F1 is 1 if both are, else 0.
        return float(p == g)
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1(pred, golds):
    """Token-level F1 of the normalized prediction against each gold answer; the max."""
    return max(_f1_one(pred, g) for g in _golds(golds))


# ---------------------------------------------------------------------------------------
# Answers against documents: shared by evaluation's scores and the RL reward.

def is_abstain(answer, abstain):
    """True when `answer` is the abstention string `abstain` after SQuAD normalization."""
    return normalize_answer(answer) == normalize_answer(abstain)


def supported(answer, docs):
    """True when the normalized answer occurs, as whole words, in a document's title + text."""
    a = normalize_answer(answer)
    return bool(a) and any(f" {a} " in f" {normalize_answer(d.get('title', '') + ' ' + d['text'])} " for d in docs)


def wilson_interval(successes, n, z=1.96):
    """The Wilson score interval for a rate of successes/n (z=1.96: 95%). Unlike p ± z·SE it
    stays inside [0, 1] and is not zero-width at 0/n or n/n, which small test sets often give.
    n = 0 says nothing: (0.0, 1.0)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)
