"""RL alone from a clone's warm-up, once per rl_seed, each kept step judged on test as `evaluate` judges it.

    python -m benchmarks.rl_runs [--root CLONE] [--seeds 45 46] [--set refrag_finetune.KEY=VALUE ...]
                                 [--train-on train|val] [--work DIR] [--warm-up-only] [--out PATH]

After `dvc repro refrag_finetune`, runs refrag_finetune's RL phase (`stages.refrag_rl`, the
pipeline's own code) from the clone's warm-up checkpoint with --set overrides, once per seed
(rl_seed); val picks the step kept, as in the pipeline. Then greedy REFRAG EM of the warm-up and
of each kept checkpoint on evaluate's test questions (params' evaluate section: the same
questions, batching and scoring as reports/eval.json), per type with n and a 95% Wilson
interval, and RL minus warm-up on the same questions: the difference, how many questions RL
gained and lost, and a 95% interval of the paired difference (normal approximation: with few
questions gained plus lost it is too narrow, zero-wide when none are, so read the counts too).
Each checkpoint's single-shot RAG mode is scored on the same questions too: issue 11's point 1
holds REFRAG mode's single-hop and abstention to the same checkpoint's RAG mode. Multi-hop EM is
also split by whether the question's own top-k (hop 1) already shows the answer's document
(`warm_up_by_hop1`, each run's `test_by_hop1`), the case rl_hop1_frac draws more of.

Why: issue 11's point 2 is "RL beats its warm-up by >= 0.05, two seeds", and a setting costs one
RL phase per seed, not a whole `dvc repro`. --train-on val is a probe, not a setting: RL trains on
the val questions (held-out people, like test) and val still picks the step, so it selects
nothing fairly; the report marks it. --warm-up-only scores the warm-up and runs no RL (to compare
warm-ups). Checkpoints go to --work (a temporary directory by
default). Writes a JSON report (default benchmarks/results/rl_runs.json).
"""
import argparse
import math
import platform
import tempfile
import time
from pathlib import Path

from benchmarks import apply_sets, report_path
from nanochat_core.common import REPO_ROOT, atomic_write_json, offline_env

TYPES = ("2hop", "3hop", "single", "unanswerable")  # Table 1's columns


def paired(warm, rl):
    """RL minus warm-up on the same questions (0/1 EM lists in the same order): the difference,
    questions gained and lost, and a 95% normal-approximation interval of the paired mean."""
    if len(warm) != len(rl) or not warm:
        raise ValueError(f"paired() needs two equally long, non-empty EM lists; got {len(warm)} and {len(rl)}")
    d = [b - a for a, b in zip(warm, rl)]
    n, mean = len(d), sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return {"n": n, "diff": mean, "gained": sum(x > 0 for x in d), "lost": sum(x < 0 for x in d),
            "lo": mean - half, "hi": mean + half}


def mode_ems(ckpt, tok, groups, kb, e, modes=("refrag", "rag")):
    """{mode: ({type: [0/1 EM per question]}, {question id: prediction})} of a checkpoint in each
    of `modes`, exactly as evaluate answers and scores them (the checkpoint loaded once)."""
    from nanochat_core.checkpoint import load_model
    from nanochat_core.evaluation import score
    from nanochat_core.inference import answer_questions
    from nanochat_core.train import resolve_device
    device = resolve_device(e["device"])
    model, _ = load_model(ckpt, tok, device)
    model.eval()
    result = {}
    for mode in modes:
        out, answers = {}, {}
        for t, qs in groups.items():
            preds = answer_questions(model, tok, qs, mode, kb, e["k"], e["retriever"], e["max_hops"],
                                     e["max_new_tokens"], e["batch_size"], copy=e["copy_guard"])
            out[t] = [r["em"] for r in score(qs, preds)]
            answers.update({q["id"]: pr["prediction"] for q, pr in zip(qs, preds)})
        result[mode] = (out, answers)
    return result


def summary(ems):
    from nanochat_core.metrics import wilson_interval
    return {t: {"n": len(v), "em": sum(v) / len(v), "em_ci": list(wilson_interval(sum(v), len(v)))}
            for t, v in ems.items()}


def by_hop1(ems, groups, shown):
    """{"2hop answer in hop 1": [EM...], "2hop answer not in hop 1": [...], same for 3hop}: the
    multi-hop EM lists of `ems` ({type: EM per question of groups[type]}) split by whether the
    question's id is in `shown` (rl.answer_in_hop1); a split with no question is left out."""
    out = {}
    for t in ("2hop", "3hop"):
        for tag, inside in (("in", True), ("not in", False)):
            v = [x for q, x in zip(groups.get(t, []), ems.get(t, [])) if (q["id"] in shown) == inside]
            if v:
                out[f"{t} answer {tag} hop 1"] = v
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository whose dvc.yaml, params and data to use")
    ap.add_argument("--seeds", type=int, nargs="+", help="rl_seed values (default: params.yaml's rl_seed)")
    ap.add_argument("--set", nargs="*", default=[], metavar="refrag_finetune.KEY=VALUE",
                    help="overrides of refrag_finetune's rl_* keys, e.g. refrag_finetune.rl_group_size=32")
    ap.add_argument("--train-on", choices=["train", "val"], default="train",
                    help="val: a probe that trains on the val questions (selects nothing fairly)")
    ap.add_argument("--work", type=Path, help="where the RL checkpoints go (default: a temporary directory)")
    ap.add_argument("--warm-up-only", action="store_true", help="score the warm-up on test and run no RL")
    ap.add_argument("--out", type=Path, default=report_path("rl_runs"))
    a = ap.parse_args(argv)
    if a.warm_up_only and (a.seeds or a.set):
        ap.error("--warm-up-only runs no RL: leave out --seeds and --set")
    offline_env()
    from nanochat_core import dvcfile, stages
    from nanochat_core.checkpoint import checkpoint_hash, load_meta
    from nanochat_core.common import read_jsonl
    from nanochat_core.evaluation import question_groups
    from nanochat_core.params import load_params
    from nanochat_core.retrieval import KnowledgeBase
    from nanochat_core.rl import answer_in_hop1
    from nanochat_core.tokenizer import Tokenizer

    root = a.root.resolve()
    paths = {k: root / v for k, v in dvcfile.stage_paths("refrag_finetune", dvcfile.load(root / "dvc.yaml")).items()}
    params = load_params(root / "params.yaml")
    for kv in a.set:
        if kv.partition("=")[0] == "refrag_finetune.rl_seed":
            ap.error(f"--set {kv}: give RL's seeds with --seeds")
    try:  # only RL's keys: anything else would describe a warm-up this run does not train
        params = apply_sets(params, a.set, lambda section, name: section == "refrag_finetune" and name.startswith("rl_"),
                            "refrag_finetune.rl_KEY=VALUE with one of the rl_* keys of refrag_finetune "
                            "(the warm-up is the clone's own checkpoint)")
    except ValueError as err:
        ap.error(str(err))
    for f in (paths["sft"], paths["parent"], *(paths["qa"] / f"{s}.jsonl" for s in ("train", "val", "test")),
              paths["kb"], paths["tokenizer"] / "tokenizer.json"):
        if not f.exists():
            raise SystemExit(f"{f} does not exist; run `dvc repro refrag_finetune` in {root} first")
    # The warm-up must be the one params.yaml describes now, or RL's questions would not be its.
    want = stages.stage_resume_key(params, "refrag_finetune", checkpoint_hash(paths["parent"]), root)
    if load_meta(paths["sft"]).get("resume_key") != want:
        raise SystemExit(f"{paths['sft']} was not trained with {root / 'params.yaml'}'s refrag_finetune section, "
                         f"from {paths['parent']} and by {root}'s code; run `dvc repro refrag_finetune` in {root} first")
    if params["distributed"]["nproc_per_node"] * params["distributed"]["nnodes"] > 1:
        print("rl_runs: runs in one process; the pipeline's RL under torchrun splits its rollouts over ranks, "
              "so the same rl_seed samples differently here", flush=True)
    seeds = [] if a.warm_up_only else a.seeds or [params["refrag_finetune"]["rl_seed"]]
    tok_path = paths["tokenizer"] / "tokenizer.json"
    tok = Tokenizer.load(tok_path)
    kb = KnowledgeBase.load(paths["kb"])
    train, val = read_jsonl(paths["qa"] / "train.jsonl"), read_jsonl(paths["qa"] / "val.jsonl")
    qa_rl = stages.rl_questions(params["refrag_finetune"], paths["qa"]) if a.train_on == "train" else []
    e = params["evaluate"]
    groups = {t: qs for t, qs in question_groups(read_jsonl(paths["qa"] / "test.jsonl"), e).items() if t in TYPES}
    if a.train_on == "val":
        print("rl_runs: --train-on val is a probe: RL trains on the questions that pick its step", flush=True)
    warm_modes = mode_ems(paths["sft"], tok, groups, kb, e)
    warm, warm_answers = warm_modes["refrag"]
    shown = answer_in_hop1(groups.get("2hop", []) + groups.get("3hop", []), kb, e["k"], e["retriever"])
    report = {"root": str(root), "set": a.set, "train_on": a.train_on, "probe": a.train_on == "val",
              "documents_seed": params["documents"]["seed"], "machine": platform.node(), "split": "test",
              "warm_up": summary(warm), "warm_up_rag_mode": summary(warm_modes["rag"][0]),
              "warm_up_by_hop1": summary(by_hop1(warm, groups, shown)),
              "warm_up_predictions": warm_answers, "runs": []}
    print("warm-up (REFRAG, test): " + ", ".join(f"{t} {r['em']:.3f} (n={r['n']})" for t, r in report["warm_up"].items()),
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        for seed in seeds:
            p = {**params, "refrag_finetune": {**params["refrag_finetune"], "rl_seed": seed}}
            out = work / f"rl_seed{seed}"
            t0 = time.time()
            s = stages.refrag_rl(p, paths["sft"], out, tok_path, val if a.train_on == "val" else train, val, kb,
                                 qa_rl=qa_rl)
            modes = mode_ems(out, tok, groups, kb, e)
            ems, answers = modes["refrag"]
            run = {"rl_seed": seed, "kept_step": s["rl_best_step"], "val_em": s["rl_best_val_em"],
                   "seconds": round(time.time() - t0), "test": summary(ems),
                   "test_rag_mode": summary(modes["rag"][0]),  # issue 11's point 1 bars
                   "rl_minus_warm_up": {t: paired(warm[t], ems[t]) for t in ems},
                   "test_by_hop1": summary(by_hop1(ems, groups, shown)),  # where RL moved multi-hop EM
                   "history": s["history"], "predictions": answers}
            report["runs"].append(run)
            print(f"rl_seed {seed}: kept step {run['kept_step']} (val {run['val_em']:.3f}), test RL - warm-up: "
                  + ", ".join(f"{t} {d['diff']:+.3f} (+{d['gained']}/-{d['lost']}, n={d['n']})"
                              for t, d in run["rl_minus_warm_up"].items()), flush=True)
    atomic_write_json(a.out, report)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
