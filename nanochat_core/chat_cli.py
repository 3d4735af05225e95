"""`nanochat ask`: answer a question with a trained checkpoint, closed-book, with one
retrieval (rag) or with the model's own searches (refrag), and show the cited sources."""
import sys
from pathlib import Path


def register(sub):
    p = sub.add_parser("ask", help="answer a question from the KB with a trained checkpoint, citing sources")
    p.add_argument("question", nargs="+")
    p.add_argument("--checkpoint", default="checkpoints/refrag", help="a checkpoint directory (default: %(default)s)")
    p.add_argument("--tokenizer", default="checkpoints/tokenizer/tokenizer.json")
    p.add_argument("--kb", default="data/kb")
    p.add_argument("--mode", choices=["closed_book", "rag", "refrag"], default="refrag")
    p.add_argument("-k", type=int, default=3)
    p.add_argument("--retriever", default="bm25")
    p.add_argument("--max-hops", type=int, default=3)
    p.set_defaults(func=ask)


def ask(args):
    from nanochat_core import rag
    from nanochat_core.retrieval import KnowledgeBase
    from nanochat_core.stages import load_model, load_tokenizer
    tok = load_tokenizer(Path(args.tokenizer))
    model, meta = load_model(Path(args.checkpoint), tok, "cpu")
    model.eval()
    kb = KnowledgeBase.load(args.kb) if args.mode != "closed_book" else None
    q = {"id": "cli", "type": "cli", "question": " ".join(args.question), "answers": [""], "gold_doc_ids": []}
    pred = rag.answer_questions(model, tok, [q], args.mode, kb, args.k, args.retriever, args.max_hops)[0]
    for i, query in enumerate(pred["queries"], 1):
        print(f"search {i}: {query}")
    print(pred["raw"].strip())
    shown = pred["documents"][-1] if pred["documents"] else []
    for c in pred["citations"]:
        if 0 < c <= len(shown):
            d = shown[c - 1]
            print(f"  [{c}] {d['title']} ({d['id']}): {d['text'][:160]}")
        else:
            print(f"  [{c}] (the model cited a source it was not shown)", file=sys.stderr)
    return 0
