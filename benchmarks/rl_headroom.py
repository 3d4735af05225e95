"""How much REFRAG's RL could gain from a checkpoint: greedy EM against what its own samples reach.

    python -m benchmarks.rl_headroom [--checkpoint checkpoints/refrag_sft] [--group 8]
                                     [--temperatures 0.5 1.0] [--split val|test|rl] [--by relation|hop1] [--out PATH]

For every question of refrag_finetune.rl_question_types in the split, per type: greedy REFRAG EM,
the mean EM of --group samples at each temperature, pass@G (some sample right) and grounded
pass@G (some sample right with the question's whole gold chain shown, so not a lucky guess
among a few dozen cities). REINFORCE with a group baseline can only move probability toward
answers its samples find, so where greedy EM is close to grounded pass@G there is little for it
to learn. --by relation splits each type by the question's relation chain (say
company.founded_by.born_in; the same rollouts), which shows where the samples never reach. --by
hop1 splits each type by whether hop 1 (the question's own top-k, the same in every rollout)
already shows the answer's document: the search that follows then brings only other documents,
and the answer must be read from an earlier block (a real world lists a company's employees and
a city's natives, so this is common; the drill world's many more people are rarely listed). Paths
come from dvc.yaml (run `dvc repro refrag_finetune` first); --root reads another
clone's. Writes a JSON report (default benchmarks/results/rl_headroom.json).
"""
import argparse
import platform
import time
from pathlib import Path

from benchmarks import report_path
from nanochat_core.common import REPO_ROOT, atomic_write_json, offline_env


def hop1_key(questions, kb, k, retriever):
    """key(question) -> "<type> answer in hop 1" when the question's own top-k (REFRAG's hop 1)
    holds the document of its last hop, else "<type> answer not in hop 1"."""
    from nanochat_core.rl import answer_in_hop1
    shown = answer_in_hop1(questions, kb, k, retriever)
    return lambda q: f"{q['type']} answer {'in' if q['id'] in shown else 'not in'} hop 1"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository whose dvc.yaml, params and data to use")
    ap.add_argument("--checkpoint", help="checkpoint dir (default: refrag_finetune's --sft, the RL warm-up)")
    ap.add_argument("--group", type=int, default=8, help="samples per question (RL's group size)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--split", choices=["val", "test", "rl"], default="val",
                    help="rl: the RL people's questions (data/qa/rl.jsonl, documents.world.rl_fraction > 0), RL's own")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--by", choices=["type", "relation", "hop1"], default="type", help="rows per question type, or "
                    "per type and relation chain, or per type and whether hop 1 already shows the answer's document")
    ap.add_argument("--out", type=Path, default=report_path("rl_headroom"))
    a = ap.parse_args(argv)
    if a.group < 1 or any(t <= 0 for t in a.temperatures):
        ap.error("--group must be >= 1 and every --temperature > 0 (temperature 0 is the greedy column)")
    offline_env()
    from nanochat_core import dvcfile
    from nanochat_core.checkpoint import load_model
    from nanochat_core.common import read_jsonl
    from nanochat_core.params import load_params
    from nanochat_core.retrieval import KnowledgeBase
    from nanochat_core.rl import headroom
    from nanochat_core.tokenizer import Tokenizer
    from nanochat_core.train import resolve_device

    root = a.root.resolve()
    paths = {k: root / v for k, v in dvcfile.stage_paths("refrag_finetune", dvcfile.load(root / "dvc.yaml")).items()}
    params = load_params(root / "params.yaml")
    p = params["refrag_finetune"]
    ckpt = Path(a.checkpoint) if a.checkpoint else paths["sft"]
    split = paths["qa"] / f"{a.split}.jsonl"
    for f in (ckpt, paths["kb"], *([] if a.split == "rl" else [split])):
        if not f.exists():
            raise SystemExit(f"{f} does not exist; run `dvc repro refrag_finetune` in {root} first")
    if not split.exists():
        raise SystemExit(f"{split} does not exist: the world has no RL people; set documents.world.rl_fraction > 0 "
                         f"in {root / 'params.yaml'} and run `dvc repro refrag_finetune`")
    tok = Tokenizer.load(paths["tokenizer"] / "tokenizer.json")
    device = resolve_device(p["device"])
    model, meta = load_model(ckpt, tok, device)
    kb = KnowledgeBase.load(paths["kb"])
    qs = [q for q in read_jsonl(split) if q["type"] in p["rl_question_types"] and len(q["hops"]) <= p["max_hops"]]
    rp = {**p, "max_new_tokens": p["rl_max_new_tokens"]}
    report = {"checkpoint": str(ckpt), "step": meta.get("step"), "split": a.split, "group": a.group, "by": a.by,
              "copy_guard": p["rl_copy_guard"],
              "documents_seed": params["documents"]["seed"], "machine": platform.node(),
              "by_temperature": {}}
    key = None  # --by type: headroom's own rows
    if a.by == "relation":
        key = lambda q: f"{q['type']} {q.get('relation', '')}"  # noqa: E731
    elif a.by == "hop1":
        key = hop1_key(qs, kb, p["k"], p["retriever"])
    for t in a.temperatures:
        t0 = time.time()
        rows = headroom(model, tok, qs, kb, rp, a.group, t, seed=a.seed, copy=p["rl_copy_guard"], key=key)
        report["by_temperature"][str(t)] = rows
        print(f"temperature {t} ({time.time() - t0:.0f}s):")
        width = max(map(len, rows), default=0)
        for typ, r in rows.items():
            print(f"  {typ:{width}s} n={r['n']:3d} greedy {r['greedy']:.3f} | sample mean {r['sample_mean']:.3f} | "
                  f"pass@{a.group} {r['pass_at_g']:.3f} | grounded pass@{a.group} {r['grounded_pass_at_g']:.3f}")
    atomic_write_json(a.out, report)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
