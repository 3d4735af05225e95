"""build_kb: data/documents.jsonl + params.kb -> data/kb/ (documents, one index per retriever,
manifest.json with every file's hash). KnowledgeBase.build writes the KB beside the old one and
swaps it in, so a crash never leaves half a KB."""
import time
from pathlib import Path

from nanochat_core.common import atomic_write_json
from nanochat_core.data.documents import chunk_documents, load_documents
from nanochat_core.retrieval import KnowledgeBase
from steps.common import stage_result

DOCUMENTS = Path("data/documents.jsonl")
KB = Path("data/kb")
SUMMARY = Path("reports/build_kb.json")


def load(params):
    return {"docs": load_documents(DOCUMENTS)}  # a bad row is an error naming the file and line


def run(inputs, params, log):
    p = params["kb"]
    docs = inputs["docs"]
    if p["chunking"]["enabled"]:
        docs = chunk_documents(docs, max_words=p["chunking"]["max_words"], overlap=p["chunking"]["overlap"])
    t0 = time.time()
    kb = KnowledgeBase.build(docs, KB, retrievers=p["retrievers"], config={"bm25": p["bm25"], "dense": p["dense"]})
    log({"documents": len(inputs["docs"]), "kb_entries": len(kb), "build_seconds": time.time() - t0}, None)
    return {"documents": len(inputs["docs"]), **kb.info()}


def save(info, params):
    # The summary holds no timings, so an unchanged KB gives an unchanged metrics file.
    summary = {"documents": info["documents"], "kb_entries": info["num_documents"], "size_bytes": info["size_bytes"],
               "retrievers": sorted(info["retrievers"])}
    atomic_write_json(SUMMARY, summary)
    return stage_result(
        metrics={"documents": summary["documents"], "kb_entries": summary["kb_entries"],
                 "size_bytes": summary["size_bytes"]},
        artifacts=[SUMMARY, KB / "manifest.json"],
        outputs={"kb": KB},
        inputs={"documents": DOCUMENTS},
        parent_stages=["prepare_documents"],
    )
