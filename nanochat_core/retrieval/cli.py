"""`nanochat kb ...` (build, search, add, remove, info) and `nanochat eval beir`."""
import json
import sys
from pathlib import Path

RETRIEVER_CHOICES = ["bm25", "dense", "tfidf", "hybrid"]


def register(sub):
    kb = sub.add_parser("kb", help="build, search and edit a knowledge base")
    kb = kb.add_subparsers(dest="kb_command", required=True)

    p = kb.add_parser("build", help="index a JSONL file of documents into a KB directory")
    p.add_argument("--documents", required=True, help="JSONL with id, title, text (or content), source, metadata")
    p.add_argument("--output", required=True, help="KB directory to create (or replace)")
    p.add_argument("--retrievers", default="bm25,dense", help="comma list of tfidf,bm25,dense, or 'all'")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="bad rows: stop, or skip and count")
    p.add_argument("--dense-index", choices=["flat", "hnsw", "ivf"], default="flat",
                   help="FAISS index: exact flat (default), or approximate hnsw/ivf for large KBs")
    p.set_defaults(func=cmd_build)

    p = kb.add_parser("search", help="search a KB")
    p.add_argument("dir")
    p.add_argument("query", nargs="+", help="one or more queries")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--retriever", choices=RETRIEVER_CHOICES, default=None,
                   help="default: hybrid when the KB has bm25 and dense, else its only retriever")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = kb.add_parser("add", help="add documents without a full rebuild")
    p.add_argument("dir")
    p.add_argument("--documents", required=True)
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    p.set_defaults(func=cmd_add)

    p = kb.add_parser("remove", help="remove documents by id")
    p.add_argument("dir")
    p.add_argument("--ids", nargs="+", required=True, help="ids, space- or comma-separated")
    p.set_defaults(func=cmd_remove)

    p = kb.add_parser("info", help="print a KB's manifest summary as JSON")
    p.add_argument("dir")
    p.set_defaults(func=cmd_info)

    ev = sub.add_parser("eval", help="evaluate").add_subparsers(dest="eval_command", required=True)
    p = ev.add_parser("beir", help="nDCG@10, recall@100, MRR@10 of a retriever on a BEIR dataset")
    p.add_argument("--data", required=True, help="BEIR directory: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    p.add_argument("--retriever", choices=RETRIEVER_CHOICES, default="bm25")
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_beir)


def _load_docs(path, on_error):
    from nanochat_core.data.documents import load_documents
    docs, report = load_documents(path, on_error=on_error, return_report=True)
    if report.skipped:
        print(report.summary(), file=sys.stderr)
    return docs


def cmd_build(args):
    from nanochat_core.retrieval.kb import KnowledgeBase
    docs = _load_docs(args.documents, args.on_error)
    config = {"dense": {"index": args.dense_index}} if args.dense_index != "flat" else None
    kb = KnowledgeBase.build(docs, args.output, retrievers=args.retrievers, config=config)
    print(f"built KB at {kb.dir}: {len(kb)} documents, retrievers {', '.join(kb.retrievers)}")


def cmd_search(args):
    from nanochat_core.retrieval.kb import KnowledgeBase
    kb = KnowledgeBase.load(args.dir)
    # Same default as KnowledgeBase.search's hybrid: bm25 + dense when both are there.
    name = args.retriever or ("hybrid" if {"bm25", "dense"} <= set(kb.retrievers) else next(iter(kb.retrievers)))
    results = kb.search(args.query, k=args.k, retriever=name)
    if args.json:
        rows = [{"query": q, "hits": [{"id": h.doc_id, "title": kb.get(h.doc_id)["title"], "score": h.score}
                                      for h in hits]} for q, hits in zip(args.query, results)]
        print(json.dumps(rows, indent=2))
        return
    for q, hits in zip(args.query, results):
        print(f"query: {q}  [{name}]")
        if not hits:
            print("  (no hits)")
        for rank, h in enumerate(hits, start=1):
            print(f"  {rank:>2}. {h.score:9.4f}  {h.doc_id}  {kb.get(h.doc_id)['title']}")


def cmd_add(args):
    from nanochat_core.retrieval.kb import KnowledgeBase
    kb = KnowledgeBase.load(args.dir)
    docs = _load_docs(args.documents, args.on_error)
    kb.add(docs)
    print(f"added {len(docs)} documents to {kb.dir}; it now has {len(kb)}")


def cmd_remove(args):
    from nanochat_core.retrieval.kb import KnowledgeBase
    ids = [i for arg in args.ids for i in arg.split(",") if i]
    kb = KnowledgeBase.load(args.dir)
    kb.remove(ids)
    print(f"removed {len(set(ids))} documents from {kb.dir}; it now has {len(kb)}")


def cmd_info(args):
    from nanochat_core.retrieval.kb import KnowledgeBase
    print(json.dumps(KnowledgeBase.load(args.dir).info(), indent=2, sort_keys=True))


def cmd_eval_beir(args):
    from nanochat_core.retrieval import make_retriever
    from nanochat_core.retrieval.beir import evaluate_retriever, load_beir
    docs, queries, qrels = load_beir(args.data, args.split)
    res = evaluate_retriever(make_retriever(args.retriever), docs, queries, qrels, k=100)
    res.update(dataset=Path(args.data).name, retriever=args.retriever, split=args.split)
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return
    print(f"{res['dataset']} ({args.split}: {res['num_queries']} queries, {res['num_docs']} docs), "
          f"retriever {args.retriever}")
    print(f"  nDCG@10     {res['ndcg@10']:.4f}")
    print(f"  recall@100  {res['recall@100']:.4f}")
    print(f"  MRR@10      {res['mrr@10']:.4f}")
