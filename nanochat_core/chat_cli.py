"""`nanochat ask`: answer a question with a trained checkpoint, closed-book, with one
retrieval (rag) or with the model's own searches (refrag), and show the cited sources."""
import sys
from pathlib import Path


def register(sub):
    p = sub.add_parser("ask", help="answer a question from the KB with a trained checkpoint, citing sources")
    p.add_argument("question", nargs="+")
    # Defaults are the pipeline's own paths, read from dvc.yaml in the working directory.
    p.add_argument("--checkpoint", help="a checkpoint directory (default: refrag_finetune's --out in dvc.yaml)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the one in pretrain's --tokenizer in dvc.yaml)")
    p.add_argument("--kb", help="a KB directory (default: build_kb's --kb in dvc.yaml)")
    p.add_argument("--mode", choices=["closed_book", "rag", "refrag"], default="refrag")
    p.add_argument("-k", type=int, default=3)
    p.add_argument("--retriever", default="bm25")
    p.add_argument("--max-hops", type=int, default=3)
    p.set_defaults(func=ask)


def ask(args):
    from nanochat_core import dvcfile
    from nanochat_core.checkpoint import load_model
    from nanochat_core.inference import answer_questions
    from nanochat_core.retrieval import KnowledgeBase
    from nanochat_core.tokenizer import Tokenizer
    if not (args.checkpoint and args.tokenizer and args.kb):
        stages = dvcfile.load()
        args.checkpoint = args.checkpoint or dvcfile.stage_paths("refrag_finetune", stages)["out"]
        args.tokenizer = args.tokenizer or Path(dvcfile.stage_paths("pretrain", stages)["tokenizer"]) / "tokenizer.json"
        args.kb = args.kb or dvcfile.stage_paths("build_kb", stages)["kb"]
    tok = Tokenizer.load(Path(args.tokenizer))
    model, meta = load_model(Path(args.checkpoint), tok, "cpu")
    model.eval()
    kb = KnowledgeBase.load(args.kb) if args.mode != "closed_book" else None
    q = {"id": "cli", "type": "cli", "question": " ".join(args.question), "answers": [""], "gold_doc_ids": []}
    pred = answer_questions(model, tok, [q], args.mode, kb, args.k, args.retriever, args.max_hops)[0]
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
