"""What every stage adapter shares. A stage is `steps/<stage>.py` with three functions, which
flows/stage.py runs as Prefect tasks inside one MLflow run:

    load(params) -> inputs              read the stage's inputs (paths fixed by dvc.yaml), validate them
    run(inputs, params, log) -> result  call the core; log(metrics: dict, step: int | None) reports
                                        progress (the flow sends it to MLflow and the Prefect log;
                                        the core never sees MLflow)
    save(result, params) -> dict        write the outputs atomically and describe them:
        {"metrics": {name: float}, "artifacts": [paths to log], "outputs": {name: path},
         "inputs": {name: path}, "parent_stages": [stages whose outputs were read],
         "checkpoint_hash": str | None}          (build it with stage_result())

`params` is the whole validated params.yaml. Paths are relative to the working directory
(the repository root under DVC). While a stage runs, NANOCHAT_MLFLOW_RUN_ID names the MLflow
run that records it; nanochat_core.stages.make_lineage writes it into each checkpoint's lineage.
After save, the flow writes data/lineage/<stage>.json: the next stage links its MLflow run to
this one through it.
"""
import math
from pathlib import Path

from nanochat_core.checkpoint import checkpoint_hash, latest_step
from nanochat_core.common import atomic_write_json
from nanochat_core.params import flatten
from nanochat_core.report import loss_plot

# The DVC stages, in pipeline order, and the params.yaml sections each reads (dvc.yaml lists
# the same sections; tests/test_flows.py keeps the two in step).
STAGES = ("prepare_documents", "build_kb", "pretrain", "midtrain", "rag_finetune", "refrag_finetune", "evaluate")
STAGE_SECTIONS = {
    "prepare_documents": ["documents"],
    "build_kb": ["kb"],
    "pretrain": ["tokenizer", "model", "pretrain"],
    "midtrain": ["midtrain"],
    "rag_finetune": ["rag_finetune"],
    "refrag_finetune": ["refrag_finetune"],
    "evaluate": ["evaluate"],
}
LINEAGE_DIR = Path("data/lineage")


def lineage_path(stage) -> Path:
    # Outside the directories the next stage depends on: the record names an MLflow run id,
    # which differs on every run, and must not make DVC rerun downstream stages.
    return LINEAGE_DIR / f"{stage}.json"


def numeric_leaves(d, prefix="") -> dict:
    """{"qa": {"train": {"count": 3}}} -> {"qa.train.count": 3.0}: every finite number in a
    nested summary, as MLflow metrics (booleans and strings are left out)."""
    return {k: float(v) for k, v in flatten(d, prefix).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def stage_result(metrics=None, artifacts=(), outputs=None, inputs=None, parent_stages=(), checkpoint_hash=None):
    """save()'s return value, checked: the flow logs and hashes exactly what this names."""
    metrics = {str(k): float(v) for k, v in (metrics or {}).items()}
    for name, p in {**(outputs or {}), **(inputs or {})}.items():
        if not Path(p).exists():
            raise FileNotFoundError(f"stage path {name}={p} does not exist")
    unknown = [s for s in parent_stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown parent stage(s) {unknown}; stages are {', '.join(STAGES)}")
    return {"metrics": metrics, "artifacts": [str(a) for a in artifacts],
            "outputs": {k: str(v) for k, v in (outputs or {}).items()},
            "inputs": {k: str(v) for k, v in (inputs or {}).items()},
            "parent_stages": list(parent_stages), "checkpoint_hash": checkpoint_hash}


def save_training(stage, result, out, inputs, parents, extra_outputs=None):
    """Shared by every training stage: summary JSON, loss curve (CSV for dvc plots + PNG)."""
    summary = {k: v for k, v in result.items() if k != "history"}
    atomic_write_json(Path(f"reports/{stage}.json"), summary)
    # Always written (DVC expects the plot files), even for a run that was already complete.
    plots = Path("reports/plots")
    loss_plot(result["history"], stage, plots / f"train_loss_{stage}.csv", plots / f"train_loss_{stage}.png")
    last = result["history"][-1] if result["history"] else {}
    metrics = {"final_loss": result["final_loss"], "steps": result["steps"], "seconds": result["seconds"]}
    metrics.update({k: v for k, v in last.items() if k in ("val_bpb", "tokens_per_s")})
    step = latest_step(out)
    meta = [] if step is None else [out / f"meta_{step:06d}.json"]
    return stage_result(metrics=metrics, artifacts=[Path(f"reports/{stage}.json"), *meta, plots / f"train_loss_{stage}.png"],
                        outputs={"checkpoint": out, **(extra_outputs or {})}, inputs=inputs, parent_stages=parents,
                        checkpoint_hash=checkpoint_hash(out))
