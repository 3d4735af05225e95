"""evaluate: every checkpoint x mode (closed-book, RAG, REFRAG) x question type -> the
metrics (DVC metrics), the report, the EM-by-type plot and table, and every answer, for
reading. Paths: dvc.yaml."""
import json

from nanochat_core import evaluation
from nanochat_core.common import atomic_write_json, atomic_write_text
from nanochat_core.report import eval_plot, markdown_report
from steps.common import numeric_leaves, stage_result


def load(params, paths):
    return {}


def run(inputs, params, paths, log, ctx):
    checkpoints = {ck: paths[ck] for ck in params["evaluate"]["checkpoints"]}
    return evaluation.evaluate(params, paths["qa"], paths["kb"], checkpoints, paths["tokenizer"] / "tokenizer.json", log)


def save(result, params, paths):
    atomic_write_json(paths["metrics"], {"headline": result["headline"], "results": result["results"]})
    markdown_report(result["results"], result["headline"], paths["report"])
    eval_plot(result["results"], paths["plot_csv"], paths["plot_png"], paths["table"])
    atomic_write_text(paths["predictions"], "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result["predictions"]))
    metrics = {k: v for k, v in result["headline"].items() if v is not None}
    metrics.update(numeric_leaves(result["results"]))
    return stage_result(metrics=metrics, artifacts=[paths[k] for k in ("metrics", "report", "plot_png", "plot_csv", "table")])
