"""`nanochat chat` (interactive, streaming, with sources), `nanochat ask` (one answer, the
same as `chat -p`) and `nanochat serve` (the browser chat, nanochat_core/serve.py)."""
import json
import sys


def _common(p):
    # Defaults are the pipeline's own paths, read from dvc.yaml in the working directory.
    p.add_argument("--checkpoint", help="a checkpoint directory (default: the most-trained one the pipeline has: "
                                        "refrag_finetune's, else rag_finetune's, else midtrain's)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: pretrain's, from dvc.yaml)")
    p.add_argument("--kb", help="a KB directory (default: build_kb's, from dvc.yaml)")
    p.add_argument("--mode", choices=["closed_book", "rag", "refrag"], default="refrag")
    p.add_argument("-k", type=int, default=3, help="documents per search")
    p.add_argument("--retriever", default="bm25", help="an index the KB has: tfidf, bm25, dense or hybrid")
    p.add_argument("--max-hops", type=int, default=3, help="refrag: documents blocks at most (hop 1 included)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="per follow-up query and per answer")
    p.add_argument("--no-copy-guard", dest="copy", action="store_false",
                   help="let rag/refrag queries and answers be any text, not only copies of what was shown "
                        "(evaluate.copy_guard: false; the default decodes as evaluate does)")


def register(sub):
    p = sub.add_parser("chat", help="chat with a trained checkpoint: streamed answers, its searches and cited sources")
    _common(p)
    p.add_argument("-p", "--prompt", help="answer this one question and exit")
    p.add_argument("--json", action="store_true", help="machine output: one JSON object per answer")
    p.add_argument("--history", type=int, default=0,
                   help="earlier turns kept in the prompt (0: each question alone, as the model was trained)")
    p.set_defaults(func=chat)
    p = sub.add_parser("ask", help="answer one question (the same as `nanochat chat -p QUESTION`)")
    p.add_argument("question", nargs="+")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: chat(a, prompt=" ".join(a.question)))
    p = sub.add_parser("serve", help="the chat in a browser, with a live KB you can add documents to")
    _common(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--live-kb", help="the KB the page edits (default: a copy of --kb beside it, `<kb>_live`, "
                                     "made on first start, so `dvc repro` never overwrites your documents)")
    p.set_defaults(func=serve)


def load_from_args(args, kb_dir=None):
    from pathlib import Path

    from nanochat_core import chat
    ckpt, tok, kb = (None, None, None)
    if not (args.checkpoint and args.tokenizer and (args.kb or kb_dir)):
        ckpt, tok, kb = chat.default_paths()
    ckpt = Path(args.checkpoint) if args.checkpoint else ckpt
    model, tokenizer, kb, meta = chat.load(ckpt, args.tokenizer or tok, kb_dir or args.kb or kb, args.mode)
    return model, tokenizer, kb, ckpt


def _print_sources(ev, out):
    for s in ev["sources"]:
        score = f" {s['score']:.2f}" if s["score"] is not None else ""
        print(f"    [{s['n']}] {s['title']} ({s['id']}){score}", file=out)


def chat(args, prompt=None):
    from nanochat_core.chat import ChatError, answer_stream
    prompt = prompt if prompt is not None else args.prompt
    if getattr(args, "history", 0) < 0:
        raise ValueError(f"--history must be >= 0 (earlier turns to keep), got {args.history}")
    model, tokenizer, kb, ckpt = load_from_args(args)
    out = sys.stdout
    interactive = prompt is None
    if interactive and not args.json:
        print(f"nanochat: {ckpt}, mode {args.mode}, KB {len(kb) if kb else 0} documents. "
              "Ask a question; an empty line or Ctrl-D ends.", file=sys.stderr)
    history = []
    while True:
        if interactive:
            if sys.stdin.isatty():
                print("you> ", end="", flush=True, file=sys.stderr)
            line = sys.stdin.readline()
            if not line or not line.strip() or line.strip() in ("/quit", "/exit"):
                return 0
            question = line.strip()
        else:
            question = prompt
        kept = history[-args.history:] if getattr(args, "history", 0) else []
        answer_open = False  # the streamed "answer: ..." line is being written
        try:
            for ev in answer_stream(model, tokenizer, question, mode=args.mode, kb=kb, k=args.k,
                                    retriever=args.retriever, max_hops=args.max_hops,
                                    max_new_tokens=args.max_new_tokens, history=kept, copy=args.copy):
                if args.json:
                    continue
                if ev["event"] == "search":
                    if answer_open:  # text written before a search was not the answer
                        print(" (searching instead)", file=out)
                        answer_open = False
                    print(f"search {ev['hop']}: {ev['query']}", file=out)
                elif ev["event"] == "sources":
                    _print_sources(ev, out)
                elif ev["event"] == "token":
                    if not answer_open:
                        print("answer: ", end="", file=out)
                        answer_open = True
                    print(ev["text"], end="", flush=True, file=out)
        except ChatError as e:
            if not interactive:
                raise
            print(f"nanochat: {e}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({k: v for k, v in ev.items() if k != "event"}), flush=True, file=out)
        else:
            if answer_open:
                print(file=out)
                if ev.get("ungrounded"):  # no source it was shown backs what streamed (inference.ground)
                    print(f"  (no source it was shown backs this, so the answer is: {ev['answer']})", file=out)
            else:
                print(f"answer: {ev['answer']}", file=out)
            for c in ev["citations"]:
                if c["id"] is None:
                    print(f"  [{c['n']}] (not a source it was shown)", file=out)
                else:
                    print(f"  [{c['n']}] {c['title']} ({c['id']})", file=out)
            out.flush()
        history.append((question, ev["answer"]))
        if not interactive:
            return 0


def serve(args):
    import shutil
    from pathlib import Path

    from nanochat_core import chat
    from nanochat_core.serve import run
    base = Path(args.kb) if args.kb else chat.default_paths()[2]
    live = Path(args.live_kb) if args.live_kb else base.with_name(base.name + "_live")
    if args.mode != "closed_book" and not (live / "manifest.json").is_file():
        if not (base / "manifest.json").is_file():
            raise chat.ChatError(f"no KB at {base}; build it with `dvc repro build_kb` (or pass --kb)")
        shutil.copytree(base, live)
        print(f"nanochat serve: copied the KB {base} to {live}; documents added on the page go there", file=sys.stderr)
    model, tokenizer, kb, ckpt = load_from_args(args, kb_dir=live)
    print(f"nanochat serve: {ckpt}, KB {live} ({len(kb) if kb else 0} documents), http://{args.host}:{args.port}/",
          file=sys.stderr)
    run(model, tokenizer, kb, host=args.host, port=args.port, checkpoint=ckpt,
        defaults={"mode": args.mode, "k": args.k, "retriever": args.retriever, "max_hops": args.max_hops,
                  "max_new_tokens": args.max_new_tokens, "copy": args.copy})
    return 0
