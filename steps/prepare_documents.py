"""prepare_documents: params.documents -> data/documents.jsonl, data/corpus/, data/qa/.

The core writes each output file atomically; this adapter adds the summary (a DVC metrics
file, so `dvc metrics show` lists document and question counts) and names the user sources
it read so their hashes go into the lineage.
"""
from pathlib import Path

from nanochat_core.common import atomic_write_json
from nanochat_core.data.prepare import prepare_documents
from steps.common import numeric_leaves, stage_result


def load(params, paths):
    # The only inputs are the user's own sources (python_docs comes with Python); the core
    # reads them, this only checks they are there before anything is written.
    sources = {}
    for i, s in enumerate(params["documents"]["sources"]):
        if s.get("path"):
            p = Path(s["path"]).expanduser()
            if not p.exists():
                raise FileNotFoundError(f"documents.sources[{i}].path: {p} does not exist; fix the path in params.yaml")
            sources[f"source_{i}"] = p
    return {"sources": sources}


def run(inputs, params, paths, log, ctx):
    summary = prepare_documents(params["documents"], paths["documents"], paths["corpus"], paths["qa"])
    log({"documents": summary["documents"]["count"], "corpus_chars": summary["corpus"]["chars"],
         **{f"qa_{name}": qa["count"] for name, qa in summary["qa"].items()}}, None)
    return {"summary": summary, "sources": inputs["sources"]}


def save(result, params, paths):
    summary = result["summary"]
    # Counts only: the files' hashes are in the lineage record, and as strings they would
    # only clutter `dvc metrics show`.
    atomic_write_json(paths["summary"], {k: v for k, v in summary.items() if k != "sha256"})
    return stage_result(metrics=numeric_leaves({k: summary[k] for k in ("documents", "corpus", "qa", "world", "skipped")}),
                        artifacts=[paths["summary"]], inputs=result["sources"])
