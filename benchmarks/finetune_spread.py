"""How far the fine-tuning stages' result moves with their seeds and learning rates, on val.

    python -m benchmarks.finetune_spread [--first midtrain] [--last refrag_finetune]
        [--seeds 0 100 200] [--lr-scales 1.0 0.25] [--set stage.key=value ...] [--out PATH]

After `dvc repro`, retrains the stages from --first to --last (midtrain, rag_finetune, and the
REFRAG warm-up: RL off) from the clone's own parent checkpoint, once per (learning-rate scale,
seed offset): every retrained stage gets its params.yaml seed + the offset and its four learning
rates x the scale. Then greedy val EM per question type, RAG mode after rag_finetune and REFRAG
mode after the warm-up, and per setting the mean and range over seeds. The test split is never
read, so a setting chosen here can still be reported on test.

Why: on this 1.4M-parameter model one training run per figure hides a seed-to-seed spread as
large as the effects being measured (docs/history.md), so a change is judged by its spread here.
Checkpoints go to --work (a temporary directory by default). Writes a JSON report (default
benchmarks/results/finetune_spread.json).
"""
import argparse
import platform
import tempfile
import time
from pathlib import Path

from benchmarks import apply_sets, report_path
from nanochat_core.common import REPO_ROOT, atomic_write_json, offline_env

STAGES = ["midtrain", "rag_finetune", "refrag_finetune"]
PARENT = {"midtrain": "pretrain", "rag_finetune": "midtrain", "refrag_finetune": "rag_finetune"}
MODE = {"rag_finetune": "rag", "refrag_finetune": "refrag"}  # the mode each stage is judged in
LRS = ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr")


def scaled(params, stages, lr_scale, seed_offset):
    """A copy of params with each of `stages` at seed + seed_offset and its learning rates x lr_scale."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    for s in stages:
        out[s]["seed"] = params[s]["seed"] + seed_offset
        for k in LRS:
            out[s][k] = params[s][k] * lr_scale
    out["refrag_finetune"]["rl_steps"] = 0
    return out


def summarize(runs):
    """{type: {"mean", "min", "max", "n"}} over runs' {type: (n, em)}; n is questions per run."""
    out = {}
    for t in sorted({t for r in runs for t in r}):
        ems = [r[t][1] for r in runs if t in r]
        out[t] = {"n": runs[0][t][0], "mean": sum(ems) / len(ems), "min": min(ems), "max": max(ems)}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository whose dvc.yaml, params and data to use")
    ap.add_argument("--first", choices=STAGES, default="rag_finetune")
    ap.add_argument("--last", choices=STAGES, default="refrag_finetune")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 100, 200], help="offsets added to each stage's seed")
    ap.add_argument("--lr-scales", type=float, nargs="+", default=[1.0])
    ap.add_argument("--set", nargs="*", default=[], metavar="STAGE.KEY=VALUE", help="params overrides, e.g. rag_finetune.steps=500")
    ap.add_argument("--work", type=Path, help="where the checkpoints go (default: a temporary directory)")
    ap.add_argument("--out", type=Path, default=report_path("finetune_spread"))
    a = ap.parse_args(argv)
    stages = STAGES[STAGES.index(a.first):STAGES.index(a.last) + 1]
    if not stages:
        ap.error(f"--first {a.first} comes after --last {a.last}")
    if not any(s in MODE for s in stages):
        ap.error("--last must be rag_finetune or refrag_finetune: midtrain alone has no val EM to compare")
    if any(x <= 0 for x in a.lr_scales):
        ap.error("every --lr-scales value must be > 0")
    offline_env()
    from nanochat_core import dvcfile, rl
    from nanochat_core import stages as st
    from nanochat_core.checkpoint import load_model
    from nanochat_core.common import read_jsonl
    from nanochat_core.params import load_params
    from nanochat_core.retrieval import KnowledgeBase
    from nanochat_core.tokenizer import Tokenizer

    root = a.root.resolve()
    dvc = dvcfile.load(root / "dvc.yaml")
    paths = {s: {k: root / v for k, v in dvcfile.stage_paths(s, dvc).items()} for s in STAGES}
    params = load_params(root / "params.yaml")
    try:
        params = apply_sets(params, a.set)
    except ValueError as err:
        ap.error(str(err))
    first_parent = paths[a.first]["parent"]
    p0 = paths[stages[0]]
    for f in (first_parent, p0["qa"] / "train.jsonl", p0["qa"] / "val.jsonl", p0["kb"], p0["tokenizer"]):
        if not f.exists():
            raise SystemExit(f"{f} does not exist; run `dvc repro {PARENT[a.first]}` in {root} first")
    tok_path = p0["tokenizer"] / "tokenizer.json"
    tok = Tokenizer.load(tok_path)
    qa, val = read_jsonl(p0["qa"] / "train.jsonl"), read_jsonl(p0["qa"] / "val.jsonl")
    kb = KnowledgeBase.load(p0["kb"])
    conversations = {"midtrain": st.midtrain_conversations, "rag_finetune": st.rag_conversations,
                     "refrag_finetune": st.refrag_conversations}
    e = params["evaluate"]

    n_val = {t: sum(q["type"] == t for q in val) for t in {q["type"] for q in val}}

    def val_em(ckpt, mode):
        ems = rl.val_em(load_model(ckpt, tok, "cpu")[0], tok, val, kb, e, mode, e["batch_size"],
                         copy=e["copy_guard"])
        return {t: (n_val[t], em) for t, em in ems.items() if t != "all"}

    report = {"root": str(root), "stages": stages, "set": a.set, "documents_seed": params["documents"]["seed"],
              "machine": platform.node(), "split": "val", "runs": [], "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        for scale in a.lr_scales:
            per_stage = {s: [] for s in stages if s in MODE}
            for off in a.seeds:
                p = scaled(params, stages, scale, off)
                parent, run = first_parent, {"lr_scale": scale, "seed_offset": off, "val_em": {}, "seconds": {}}
                for s in stages:
                    out = work / f"lr{scale:g}_seed{off}" / s
                    t0 = time.time()
                    st.finetune(s, p, conversations[s](p[s], [dict(q) for q in qa], kb), parent, out, tok_path)
                    run["seconds"][s] = round(time.time() - t0)
                    if s in MODE:
                        run["val_em"][s] = val_em(out, MODE[s])
                        per_stage[s].append(run["val_em"][s])
                        print(f"lr x{scale:g} seed +{off} {s} ({MODE[s]} mode, val): "
                              + ", ".join(f"{t} {em:.3f} (n={n})" for t, (n, em) in run["val_em"][s].items()), flush=True)
                    parent = out
                report["runs"].append(run)
            report["settings"][f"{scale:g}"] = {s: summarize(r) for s, r in per_stage.items()}
    for scale, by_stage in report["settings"].items():
        for s, rows in by_stage.items():
            print(f"lr x{scale} {s}: " + ", ".join(f"{t} {r['mean']:.3f} [{r['min']:.3f}-{r['max']:.3f}]"
                                                  for t, r in rows.items()))
    atomic_write_json(a.out, report)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
