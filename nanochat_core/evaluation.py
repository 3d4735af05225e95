"""The evaluate stage: every checkpoint x mode (closed-book, single-shot RAG, REFRAG) x
question type on the held-out questions, and how each answer is scored. No training stage
depends on this module, so editing the scoring retrains nothing. (inference.py and metrics.py
are shared with REFRAG's RL phase, which samples answers and rewards them.)"""
import random
from pathlib import Path

from nanochat_core import metrics
from nanochat_core.checkpoint import load_model
from nanochat_core.common import print0, read_jsonl
from nanochat_core.data.world import ABSTAIN
from nanochat_core.inference import answer_questions
from nanochat_core.metrics import exact_match, f1
from nanochat_core.retrieval import KnowledgeBase
from nanochat_core.tokenizer import Tokenizer
from nanochat_core.train import resolve_device


def evaluate(params, qa_dir, kb_dir, checkpoints, tokenizer_path, log=None):
    """Every checkpoint in params.evaluate.checkpoints ({name: dir} in `checkpoints`) x mode x
    question type on the test questions. Returns {"results": {ckpt: {mode: {type: metrics}}},
    "headline": {...}, "predictions": [...]}."""
    p = params["evaluate"]
    device = resolve_device(p["device"])
    kb = KnowledgeBase.load(kb_dir)
    tok = Tokenizer.load(tokenizer_path)
    test = read_jsonl(Path(qa_dir) / "test.jsonl")
    groups = {}
    for q in test:
        t = "known_single" if q.get("known") else q["type"]
        groups.setdefault(t, []).append(q)
    groups = {t: sample(qs, p["max_questions_per_type"], p["seed"]) for t, qs in sorted(groups.items())}
    results, predictions = {}, []
    for ck in p["checkpoints"]:
        model, _ = load_model(checkpoints[ck], tok, device)
        model.eval()
        for mode in p["modes"]:
            for t, qs in groups.items():
                preds = answer_questions(model, tok, qs, mode, kb, p["k"], p["retriever"], p["max_hops"],
                                         p["max_new_tokens"], p["batch_size"])
                agg = aggregate(score(qs, preds))
                results.setdefault(ck, {}).setdefault(mode, {})[t] = agg
                predictions += [{"checkpoint": ck, "mode": mode, **pr} for pr in preds]
                print0(f"[evaluate] {ck:7s} {mode:11s} {t:14s} n={agg['n']:3d} EM {agg['em']:.3f} "
                       f"F1 {agg['f1']:.3f} halluc {agg['hallucinated']:.3f}")
                if log:
                    log({f"{ck}.{mode}.{t}.em": agg["em"]}, None)
    return {"results": results, "headline": headline(results), "predictions": predictions}


def sample(records, n, seed):
    """A deterministic subset of at most n records (all when n is 0 or larger than the set)."""
    if not n or n >= len(records):
        return list(records)
    return random.Random(seed).sample(list(records), n)


def is_abstain(answer):
    return metrics.is_abstain(answer, ABSTAIN)


def score(questions, predictions):
    """Per-question metrics: em, f1, abstained, abstention correct, supported (the answer
    appears in a shown document), hallucinated (answered, but unsupported), retrieval recall
    over every hop's gold documents, citation precision."""
    rows = []
    for q, p in zip(questions, predictions):
        golds = q["answers"]
        gold_abstain = is_abstain(golds[0])
        abstained = is_abstain(p["prediction"])
        seen = [d for block in p["documents"] for d in block]
        seen_ids = {d["id"] for d in seen}
        supported = metrics.supported(p["prediction"], seen)
        gold_ids = {i for hop in q["gold_doc_ids"] for i in hop}
        final_block = p["documents"][-1] if p["documents"] else []
        cited = [final_block[c - 1]["id"] for c in p["citations"] if 0 < c <= len(final_block)]
        rows.append({
            "em": exact_match(p["prediction"], golds), "f1": f1(p["prediction"], golds),
            "abstained": float(abstained), "abstention_correct": float(abstained == gold_abstain),
            "hallucinated": float(not abstained and not supported),
            "retrieval_recall": (len(gold_ids & seen_ids) / len(gold_ids)) if gold_ids else 0.0,
            "citation_precision": (sum(c in set(q["gold_doc_ids"][-1]) for c in cited) / len(cited)) if cited else None,
        })
    return rows


def aggregate(rows):
    keys = rows[0].keys() if rows else []
    agg = {"n": len(rows)}
    for k in keys:
        vals = [r[k] for r in rows if r[k] is not None]
        agg[k] = sum(vals) / len(vals) if vals else None
    return agg


def headline(results):
    """The numbers the README's claims rest on (None where a combination was not run)."""
    def em(ck, mode, t):
        return results.get(ck, {}).get(mode, {}).get(t, {}).get("em")
    final = "refrag" if "refrag" in results else ("rag" if "rag" in results else next(iter(results), None))
    rag_ck = "rag" if "rag" in results else final
    return {
        "rag_em_single_test": em(rag_ck, "rag", "single"),
        "closed_book_em_single_test": em(rag_ck, "closed_book", "single"),
        "closed_book_em_known_single": em(rag_ck, "closed_book", "known_single"),
        "rag_em_2hop": em(final, "rag", "2hop"),
        "refrag_em_2hop": em(final, "refrag", "2hop"),
        "refrag_em_3hop": em(final, "refrag", "3hop"),
        "refrag_sft_em_2hop": em("refrag_sft", "refrag", "2hop"),
        "rag_abstention_unanswerable": results.get(rag_ck, {}).get("rag", {}).get("unanswerable", {}).get("abstained"),
        "rag_em_counterfactual": em(rag_ck, "rag", "counterfactual"),
    }
