"""refrag_finetune: the parent checkpoint + QA train/val + KB + params.refrag_finetune ->
the supervised warm-up checkpoint (--sft) and the RL checkpoint (--out). Paths: dvc.yaml.
What the warm-up trains on: nanochat_core.stages.refrag_conversations; the RL phase:
nanochat_core.rl (val questions pick the kept step)."""
from nanochat_core import stages
from nanochat_core.checkpoint import checkpoint_hash
from nanochat_core.common import atomic_write_json, read_jsonl
from nanochat_core.report import rl_plot
from steps.common import finetune_step, save_training

STAGE = "refrag_finetune"
_load, _run, _ = finetune_step(STAGE, stages.refrag_conversations)


def load(params, paths):
    return {**_load(params, paths), "qa_val": read_jsonl(paths["qa"] / "val.jsonl"),
            "qa_rl": stages.rl_questions(params[STAGE], paths["qa"])}


def run(inputs, params, paths, log, ctx):
    sft = _run(inputs, params, {**paths, "out": paths["sft"]}, log, ctx)
    data = {"qa_train": paths["qa"] / "train.jsonl", "qa_val": paths["qa"] / "val.jsonl", "kb": paths["kb"]}
    if inputs["qa_rl"]:
        data["qa_rl"] = paths["qa"] / "rl.jsonl"
    rl = stages.refrag_rl(params, paths["sft"], paths["out"], paths["tokenizer"] / "tokenizer.json", inputs["qa"],
                          inputs["qa_val"], inputs["kb"], run=ctx, log=log, data=data, qa_rl=inputs["qa_rl"])
    return {"sft": sft, "rl": rl}


def save(result, params, paths):
    out = save_training(STAGE, result["sft"], {**paths, "out": paths["sft"]})
    rl = result["rl"]
    rl_plot(rl["history"], paths["rl_csv"], paths["rl_png"])
    summary = {**{k: v for k, v in result["sft"].items() if k != "history"},
               **{k: v for k, v in rl.items() if k != "history"}}
    atomic_write_json(paths["summary"], summary)
    out["metrics"].update({k: float(v) for k, v in rl.items() if isinstance(v, (int, float))})
    out["artifacts"].append(str(paths["rl_png"]))
    out["checkpoint_hash"] = checkpoint_hash(paths["out"])  # the stage's product is the RL checkpoint
    return out
