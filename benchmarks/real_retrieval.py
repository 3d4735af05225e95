"""Table 3: retrieval on real benchmark data (../shared/data, or NANOCHAT_REFERENCE_DATA).

    python -m benchmarks.real_retrieval            # BM25 and TF-IDF (~1 min)
    python -m benchmarks.real_retrieval --dense    # also MiniLM dense and hybrid (~5 min on 2 cores)

Writes reports/real_retrieval.md and .json.
- SciFact (BEIR test): nDCG@10, recall@100, MRR@10 per retriever.
- HotpotQA distractor (IRCoT's 250 dev questions): every question's 10 paragraphs pooled into one
  corpus (deduplicated by title and text), then the share of questions with BOTH gold paragraphs
  in the k documents shown, k = 2, 5, 10, for three ways of searching:
    single-shot  the question's top-k
    two-step     hop 1 shows the question's top ceil(k/2); hop 2 searches "<title of hop 1's top
                 document> <question>" and fills the remaining places with documents not yet
                 shown: a generator-free iterative baseline
    oracle       as two-step, but hop 2 searches the title of a gold paragraph hop 1 missed (the
                 headroom a perfect follow-up query would have)
"""
import argparse
import json
import math
import os
from pathlib import Path

from nanochat_core.common import REPO_ROOT, atomic_write_json, atomic_write_text
from nanochat_core.retrieval import KnowledgeBase, make_retriever
from nanochat_core.retrieval.beir import evaluate_retriever, load_beir

KS = (2, 5, 10)


def data_dir():
    return Path(os.environ.get("NANOCHAT_REFERENCE_DATA", REPO_ROOT.parent / "shared" / "data"))


def load_hotpot(path):
    """(docs, questions): pooled paragraphs [{id, title, text}] and [{question, gold: [id, id]}]."""
    ids, docs, qs = {}, [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            row = json.loads(line)
            gold = []
            for c in row["contexts"]:
                key = (c["title"], c["paragraph_text"])
                if key not in ids:
                    ids[key] = f"p{len(ids)}"
                    docs.append({"id": ids[key], "title": c["title"], "text": c["paragraph_text"]})
                if c["is_supporting"]:
                    gold.append(ids[key])
            if len(set(gold)) != 2:
                raise ValueError(f"{path}:{n}: expected 2 supporting paragraphs, found {len(set(gold))}")
            qs.append({"question": row["question_text"], "gold": sorted(set(gold))})
    return docs, qs


def two_step(kb, retriever, question, k, second_query):
    """hop 1: the question's top ceil(k/2); hop 2: second_query(hop-1 ids) fills the rest with
    documents not shown yet. Returns the k ids shown."""
    first = [h.doc_id for h in kb.search([question], math.ceil(k / 2), retriever)[0]]
    q2 = second_query(first)
    more = [h.doc_id for h in kb.search([q2], k + len(first), retriever)[0] if h.doc_id not in first]
    return first + more[:k - len(first)]


def hotpot_table(path, retriever):
    docs, qs = load_hotpot(path)
    kb = KnowledgeBase.build(docs, None, [retriever] if retriever != "hybrid" else ["bm25", "dense"])
    title = {d["id"]: d["title"] for d in docs}
    rows = {"single-shot": {}, "two-step (title + question)": {}, "oracle (gold bridge title)": {}}
    for k in KS:
        single = kb.search([q["question"] for q in qs], k, retriever)
        hit = lambda shown, q: set(q["gold"]) <= set(shown)  # noqa: E731
        rows["single-shot"][k] = sum(hit([h.doc_id for h in s], q) for s, q in zip(single, qs)) / len(qs)
        two = [two_step(kb, retriever, q["question"], k, lambda first, q=q: f"{title[first[0]]} {q['question']}")
               for q in qs]
        rows["two-step (title + question)"][k] = sum(hit(s, q) for s, q in zip(two, qs)) / len(qs)

        def oracle(first, q):
            missed = [g for g in q["gold"] if g not in first]
            return title[missed[0]] if missed else q["question"]
        orc = [two_step(kb, retriever, q["question"], k, lambda first, q=q: oracle(first, q)) for q in qs]
        rows["oracle (gold bridge title)"][k] = sum(hit(s, q) for s, q in zip(orc, qs)) / len(qs)
    return {"n_questions": len(qs), "n_paragraphs": len(docs), "retriever": retriever, "both_gold_recall": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dense", action="store_true", help="also dense (MiniLM) and hybrid")
    ap.add_argument("--out", default=str(REPO_ROOT / "reports" / "real_retrieval"))
    a = ap.parse_args()
    root = data_dir()
    if not root.is_dir():
        raise SystemExit(f"no reference data at {root}; set NANOCHAT_REFERENCE_DATA to the shared data directory")
    retrievers = ["bm25", "tfidf"] + (["dense", "hybrid"] if a.dense else [])
    out = {"scifact": {}, "hotpotqa": {}}
    docs, queries, qrels = load_beir(root / "beir" / "scifact", "test")
    for r in retrievers:
        res = evaluate_retriever(make_retriever(r), docs, queries, qrels, k=100)
        out["scifact"][r] = {m: res[m] for m in ("ndcg@10", "recall@100", "mrr@10", "num_queries", "num_docs")}
        print(f"scifact {r}: nDCG@10 {res['ndcg@10']:.3f}", flush=True)
    for r in [x for x in retrievers if x in ("bm25", "hybrid")]:
        out["hotpotqa"][r] = hotpot_table(root / "qa" / "hotpotqa_dev_distractor_250.jsonl", r)
        print(f"hotpotqa {r}: {out['hotpotqa'][r]['both_gold_recall']}", flush=True)
    lines = ["# Table 3: retrieval on real data", "", "`python -m benchmarks.real_retrieval"
             + (" --dense" if a.dense else "") + "`", "",
             "## BEIR SciFact (test, 300 queries, 5,183 documents)", "",
             "| retriever | nDCG@10 | recall@100 | MRR@10 |", "|---|---|---|---|"]
    lines += [f"| {r} | {m['ndcg@10']:.3f} | {m['recall@100']:.3f} | {m['mrr@10']:.3f} |" for r, m in out["scifact"].items()]
    for r, h in out["hotpotqa"].items():
        lines += ["", f"## HotpotQA distractor: both gold paragraphs shown ({r}; {h['n_questions']} questions, "
                  f"{h['n_paragraphs']} pooled paragraphs)", "", "| search | " + " | ".join(f"k={k}" for k in KS) + " |",
                  "|---|" + "---|" * len(KS)]
        lines += [f"| {name} | " + " | ".join(f"{v[k]:.3f}" for k in KS) + " |" for name, v in h["both_gold_recall"].items()]
    atomic_write_text(a.out + ".md", "\n".join(lines) + "\n")
    atomic_write_json(a.out + ".json", out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
