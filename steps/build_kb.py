"""build_kb: data/documents.jsonl + params.kb -> data/kb/ (documents, one index per retriever,
manifest.json with every file's hash). KnowledgeBase.build writes the KB beside the old one and
swaps it in, so a crash never leaves half a KB."""
import time

from nanochat_core.common import atomic_write_json
from nanochat_core.data.documents import chunk_documents, load_documents
from nanochat_core.retrieval import KnowledgeBase
from steps.common import stage_result


def load(params, paths):
    return {"docs": load_documents(paths["documents"])}  # a bad row is an error naming the file and line


def run(inputs, params, paths, log, ctx):
    p = params["kb"]
    docs = inputs["docs"]
    if p["chunking"]["enabled"]:
        docs = chunk_documents(docs, max_words=p["chunking"]["max_words"], overlap=p["chunking"]["overlap"])
    t0 = time.time()
    kb = KnowledgeBase.build(docs, paths["kb"], retrievers=p["retrievers"], config={"bm25": p["bm25"], "dense": p["dense"]})
    log({"documents": len(inputs["docs"]), "kb_entries": len(kb), "build_seconds": time.time() - t0}, None)
    return {"documents": len(inputs["docs"]), **kb.info()}


def save(info, params, paths):
    # The summary holds no timings, so an unchanged KB gives an unchanged metrics file.
    summary = {"documents": info["documents"], "kb_entries": info["num_documents"], "size_bytes": info["size_bytes"],
               "retrievers": sorted(info["retrievers"])}
    atomic_write_json(paths["summary"], summary)
    return stage_result(metrics={k: summary[k] for k in ("documents", "kb_entries", "size_bytes")},
                        artifacts=[paths["summary"], paths["kb"] / "manifest.json"])
