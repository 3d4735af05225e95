"""The BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) and evaluating a retriever on it."""
import time
from pathlib import Path

from nanochat_core.data.documents import iter_jsonl, load_documents
from nanochat_core.metrics import evaluate_run


def load_beir(data_dir, split="test"):
    """-> (docs, queries {qid: text}, qrels {qid: {doc_id: grade}}); only queries that have qrels."""
    d = Path(data_dir)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (d / name).exists():
            raise FileNotFoundError(f"{d / name} is missing; a BEIR directory holds corpus.jsonl, "
                                    f"queries.jsonl and qrels/{split}.tsv")
    docs = load_documents(d / "corpus.jsonl")
    qrels = {}
    with open(d / "qrels" / f"{split}.tsv", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if line_no == 1 and parts[0] == "query-id":
                continue  # header
            if not line.strip():
                continue
            if len(parts) != 3:
                raise ValueError(f"{d}/qrels/{split}.tsv:{line_no}: expected 'query-id<TAB>corpus-id<TAB>score'")
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    queries = {}
    for line_no, q in iter_jsonl(d / "queries.jsonl"):
        qid = q.get("_id", q.get("id"))
        if not isinstance(qid, str) or not isinstance(q.get("text"), str):
            raise ValueError(f"{d}/queries.jsonl:{line_no}: a query needs string '_id' and 'text'")  # noqa: TRY004
        if qid in qrels:
            queries[qid] = q["text"]
    missing = set(qrels) - set(queries)
    if missing:
        raise ValueError(f"{d}/qrels/{split}.tsv judges {len(missing)} queries not in queries.jsonl "
                         f"(e.g. {min(missing)!r})")
    return docs, queries, qrels


def evaluate_retriever(retriever, docs, queries, qrels, k=100):
    """Indexes `docs` in memory, runs every query, returns metrics and timings."""
    t0 = time.perf_counter()
    retriever.index(docs)
    t1 = time.perf_counter()
    qids = list(queries)
    results = retriever.search([queries[q] for q in qids], k=k)
    t2 = time.perf_counter()
    run = {q: [h.doc_id for h in hits] for q, hits in zip(qids, results)}
    out = evaluate_run(run, qrels, metrics=("ndcg@10", "recall@100", "mrr@10"))
    out.update(num_docs=len(docs), index_s=round(t1 - t0, 3), search_s=round(t2 - t1, 3))
    return out
