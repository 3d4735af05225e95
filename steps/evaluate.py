"""evaluate: every checkpoint x mode (closed-book, RAG, REFRAG) x question type ->
reports/metrics.json (DVC metrics), reports/report.md, reports/plots/eval_by_type.{csv,png},
reports/predictions.jsonl (every answer, for reading)."""
import json
from pathlib import Path

from nanochat_core import evaluation
from nanochat_core.common import atomic_write_json, atomic_write_text
from nanochat_core.report import eval_plot, markdown_report
from steps.common import numeric_leaves, stage_result

QA, KB, CKPTS = Path("data/qa"), Path("data/kb"), Path("checkpoints")
METRICS, REPORT, PREDS = Path("reports/metrics.json"), Path("reports/report.md"), Path("reports/predictions.jsonl")
PLOT_CSV, PLOT_PNG = Path("reports/plots/eval_by_type.csv"), Path("reports/plots/eval_by_type.png")
TABLE = Path("reports/eval_table.csv")


def load(params):
    return {"qa": QA, "kb": KB, "checkpoints": CKPTS}


def run(inputs, params, log):
    return evaluation.evaluate(params, inputs["qa"], inputs["kb"], inputs["checkpoints"], log)


def save(result, params):
    atomic_write_json(METRICS, {"headline": result["headline"], "results": result["results"]})
    markdown_report(result["results"], result["headline"], REPORT)
    eval_plot(result["results"], PLOT_CSV, PLOT_PNG, TABLE)
    atomic_write_text(PREDS, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result["predictions"]))
    metrics = {k: v for k, v in result["headline"].items() if v is not None}
    metrics.update(numeric_leaves(result["results"]))
    return stage_result(metrics=metrics, artifacts=[METRICS, REPORT, PLOT_PNG, PLOT_CSV, TABLE],
                        outputs={"metrics": METRICS},
                        inputs={"qa": QA, "kb": KB, **{c: CKPTS / c for c in params["evaluate"]["checkpoints"]}},
                        parent_stages=["refrag_finetune", "rag_finetune", "midtrain", "pretrain", "build_kb"])
