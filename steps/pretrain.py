"""pretrain: data/corpus + params.{tokenizer,model,pretrain} -> checkpoints/tokenizer,
checkpoints/base (step checkpoints; a killed run resumes from the last one)."""
from pathlib import Path

from nanochat_core import stages
from nanochat_core.checkpoint import checkpoint_hash
from nanochat_core.common import atomic_write_json
from nanochat_core.report import loss_plot
from steps.common import stage_result

CORPUS, OUT = Path("data/corpus"), Path("checkpoints/base")
SUMMARY, PLOTS = Path("reports/pretrain.json"), Path("reports/plots")


def load(params):
    stages.read_corpus(CORPUS)  # fail early, naming the missing input
    return {"corpus": CORPUS}


def run(inputs, params, log):
    return stages.pretrain(params, inputs["corpus"], OUT, log)


def save(result, params):
    return save_training("pretrain", result, OUT, {"corpus": CORPUS}, [], extra_outputs={"tokenizer": stages.TOKENIZER_PATH})


def save_training(stage, result, out, inputs, parents, extra_outputs=None):
    """Shared by every training stage: summary JSON, loss curve (CSV for dvc plots + PNG)."""
    summary = {k: v for k, v in result.items() if k != "history"}
    atomic_write_json(Path(f"reports/{stage}.json"), summary)
    if result["history"]:
        loss_plot(result["history"], stage, PLOTS / f"train_loss_{stage}.csv", PLOTS / f"train_loss_{stage}.png")
    last = result["history"][-1] if result["history"] else {}
    metrics = {"final_loss": result["final_loss"], "steps": result["steps"], "seconds": result["seconds"]}
    metrics.update({k: v for k, v in last.items() if k in ("val_bpb", "tokens_per_s")})
    meta = sorted(out.glob("meta_*.json"))[-1:]
    return stage_result(metrics=metrics, artifacts=[Path(f"reports/{stage}.json"), *meta,
                                                    *[p for p in [PLOTS / f"train_loss_{stage}.png"] if p.exists()]],
                        outputs={"checkpoint": out, **(extra_outputs or {})}, inputs=inputs, parent_stages=parents,
                        checkpoint_hash=checkpoint_hash(out))
