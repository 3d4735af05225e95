"""What every stage adapter shares. A stage is `steps/<stage>.py` with three functions, which
flows/stage.py runs as Prefect tasks inside one MLflow run:

    load(params, paths) -> inputs                read and check the stage's inputs
    run(inputs, params, paths, log, ctx) -> result
                                                 call the core; log(metrics, step) reports progress
                                                 (the flow sends it to MLflow and the Prefect log;
                                                 the core never sees MLflow); ctx is the run context
                                                 ({"mlflow_run_id", "pipeline_run_id", "git_commit"})
                                                 that goes into checkpoint lineage
    save(result, params, paths) -> dict          write the outputs atomically and describe them
                                                 with stage_result()

`params` is the whole validated params.yaml; `paths` ({name: Path}) are the `--name path` pairs
of the stage's command in dvc.yaml, the only place a path is written. The flow works out from
dvc.yaml which of them are inputs and outputs (to hash them into the lineage) and which stages
are the parents.
"""
import math
from pathlib import Path

from nanochat_core import stages
from nanochat_core.checkpoint import checkpoint_hash, latest_step
from nanochat_core.common import atomic_write_json
from nanochat_core.params import flatten
from nanochat_core.report import loss_plot


def numeric_leaves(d, prefix="") -> dict:
    """{"qa": {"train": {"count": 3}}} -> {"qa.train.count": 3.0}: every finite number in a
    nested summary, as MLflow metrics (booleans and strings are left out)."""
    return {k: float(v) for k, v in flatten(d, prefix).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def stage_result(metrics=None, artifacts=(), checkpoint_hash=None, inputs=None):
    """save()'s return value: the metrics and files the flow logs to MLflow. `inputs` names
    what the stage read beyond its dvc.yaml paths (a user's own documents), for the lineage."""
    metrics = {str(k): float(v) for k, v in (metrics or {}).items()}
    missing = [str(a) for a in artifacts if not Path(a).exists()]
    if missing:
        raise FileNotFoundError(f"stage artifact(s) {missing} do not exist")
    return {"metrics": metrics, "artifacts": [str(a) for a in artifacts], "checkpoint_hash": checkpoint_hash,
            "inputs": {k: str(v) for k, v in (inputs or {}).items()}}


def save_training(stage, result, paths):
    """Shared by every training stage: summary JSON, loss curve (CSV for dvc plots + PNG)."""
    summary = {k: v for k, v in result.items() if k != "history"}
    atomic_write_json(paths["summary"], summary)
    # Always written (DVC expects the plot files); the history is the whole run's, from the checkpoint.
    loss_plot(result["history"], stage, paths["loss_csv"], paths["loss_png"])
    last = next((h for h in reversed(result["history"]) if "tokens_per_s" in h), {})
    metrics = {"final_loss": result["final_loss"], "steps": result["steps"], "seconds": result["seconds"]}
    metrics.update({k: v for k, v in last.items() if k in ("val_bpb", "val_loss", "tokens_per_s")})
    out = paths["out"]
    meta = out / f"meta_{latest_step(out):06d}.json"
    return stage_result(metrics=metrics, artifacts=[paths["summary"], meta, paths["loss_png"]],
                        checkpoint_hash=checkpoint_hash(out))


def finetune_step(stage, conversations):
    """load/run/save of a fine-tuning stage: `conversations(section, qa_train, kb)` builds its
    training set from the parent stage's checkpoint, the train questions and the KB."""
    def load(params, paths):
        from nanochat_core.common import read_jsonl
        from nanochat_core.retrieval import KnowledgeBase
        if latest_step(paths["parent"]) is None:  # fail in load, naming the missing input
            raise FileNotFoundError(f"no checkpoint in {paths['parent']}; run the stage that trains it (`dvc repro`)")
        return {"qa": read_jsonl(paths["qa"] / "train.jsonl"), "kb": KnowledgeBase.load(paths["kb"])}

    def run(inputs, params, paths, log, ctx):
        convs = conversations(params[stage], inputs["qa"], inputs["kb"])
        return stages.finetune(stage, params, convs, paths["parent"], paths["out"], paths["tokenizer"] / "tokenizer.json",
                               run=ctx, log=log, data={"qa_train": paths["qa"] / "train.jsonl", "kb": paths["kb"]})

    def save(result, params, paths):
        return save_training(stage, result, paths)
    return load, run, save
