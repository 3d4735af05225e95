"""evaluate: every checkpoint x mode (closed-book, RAG, REFRAG) x question type -> the
headline numbers (the DVC metrics file: few enough to read in `dvc metrics show`), every
figure (the eval file: per checkpoint x mode x type, where multi-hop answers fail, EM by
relation chain), the report (Table 1), the EM-by-type and held-out hallucination plots, the
long table, and every answer, for reading. Paths: dvc.yaml."""
import json

from nanochat_core import evaluation
from nanochat_core.common import atomic_write_json, atomic_write_text
from nanochat_core.eval_report import eval_plot, hallucination_plot, markdown_report
from steps.common import numeric_leaves, stage_result


def load(params, paths):
    return {}


def run(inputs, params, paths, log, ctx):
    checkpoints = {ck: paths[ck] for ck in params["evaluate"]["checkpoints"]}
    return evaluation.evaluate(params, paths["qa"], paths["kb"], checkpoints, paths["tokenizer"] / "tokenizer.json", log)


def save(result, params, paths):
    results = result["results"]
    atomic_write_json(paths["eval"], {"headline": result["headline"], "results": results,
                                      "final_doc": result["final_doc"], "by_relation": result["by_relation"]})
    atomic_write_json(paths["metrics"], {"headline": result["headline"]})
    markdown_report(results, result["headline"], paths["report"], evaluation.HELD_OUT, result["final_doc"],
                    result["by_relation"])
    eval_plot(results, paths["plot_csv"], paths["plot_png"], paths["table"])
    rates = {ck: {mode: evaluation.heldout_rate(results, ck, mode) for mode in modes} for ck, modes in results.items()}
    hallucination_plot(rates, paths["halluc_csv"], paths["halluc_png"])
    atomic_write_text(paths["predictions"], "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result["predictions"]))
    metrics = {k: v for k, v in result["headline"].items() if v is not None}
    metrics.update(numeric_leaves(results))
    return stage_result(metrics=metrics, artifacts=[paths[k] for k in ("metrics", "eval", "report", "plot_png", "plot_csv",
                                                                       "table", "halluc_png", "halluc_csv")])
