"""The evaluate stage: every checkpoint x mode (closed-book, single-shot RAG, REFRAG) x
question type on the held-out questions. Its own module so that editing evaluation never
invalidates the training stages in DVC."""
import sys
from pathlib import Path

from nanochat_core import rag
from nanochat_core.retrieval import KnowledgeBase
from nanochat_core.stages import load_model, load_tokenizer, read_jsonl
from nanochat_core.train import resolve_device


def evaluate(params, qa_dir="data/qa", kb_dir="data/kb", ckpt_root="checkpoints", log=None):
    """Every checkpoint x mode x question type on the test questions. Returns
    {"results": {ckpt: {mode: {type: metrics}}}, "headline": {...}, "predictions": [...]}."""
    p = params["evaluate"]
    device = resolve_device(p.get("device"))
    kb = KnowledgeBase.load(kb_dir)
    tok = load_tokenizer()
    test = read_jsonl(Path(qa_dir) / "test.jsonl")
    groups = {}
    for q in test:
        t = "known_single" if q.get("known") else q["type"]
        groups.setdefault(t, []).append(q)
    groups = {t: rag.sample(qs, p["max_questions_per_type"], p["seed"]) for t, qs in sorted(groups.items())}
    results, predictions = {}, []
    for ck in p["checkpoints"]:
        model, _ = load_model(Path(ckpt_root) / ck, tok, device)
        model.eval()
        for mode in p["modes"]:
            for t, qs in groups.items():
                preds = rag.answer_questions(model, tok, qs, mode, kb, p["k"], p["retriever"], p["max_hops"],
                                             p["max_new_tokens"], p["batch_size"])
                agg = rag.aggregate(rag.score(qs, preds))
                results.setdefault(ck, {}).setdefault(mode, {})[t] = agg
                predictions += [{"checkpoint": ck, "mode": mode, **pr} for pr in preds]
                print(f"[evaluate] {ck:7s} {mode:11s} {t:14s} n={agg['n']:3d} EM {agg['em']:.3f} "
                      f"F1 {agg['f1']:.3f} halluc {agg['hallucinated']:.3f}", file=sys.stderr, flush=True)
                if log:
                    log({f"{ck}.{mode}.{t}.em": agg["em"]}, None)
    return {"results": results, "headline": headline(results), "predictions": predictions}


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
        "rag_abstention_unanswerable": results.get(rag_ck, {}).get("rag", {}).get("unanswerable", {}).get("abstained"),
        "rag_em_counterfactual": em(rag_ck, "rag", "counterfactual"),
    }
