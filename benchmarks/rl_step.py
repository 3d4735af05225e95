"""What one RL step costs, and where: its rollouts and its policy-gradient backward, each in one pass
over all of the step's rows (the backward with a gradient through every row) against passes of
rl_rows_per_pass rows (the pipeline's rl.policy_backward: sorted by length, flat groups' rows
without a gradient), with the two gradients compared.

    python -m benchmarks.rl_step [--root CLONE] [--steps 3] [--out PATH]

After `dvc repro refrag_finetune`, draws --steps steps of refrag_finetune's RL questions (its pool
over the clone's KB; rl_drill_frac is not followed) and rolls them out from the clone's warm-up
(rl_questions_per_step x rl_group_size at rl_temperature, the copy guard as rl_copy_guard says),
scores them with RL's reward, and times each way, the two taking turns at going first; both
backwards score the same rollouts. Writes a JSON report (default benchmarks/results/rl_step.json):
seconds per step each way, their ratios measured in this run, and the largest gradient difference.
"""
import argparse
import platform
import random
import time
from pathlib import Path

import torch

from benchmarks import report_path
from nanochat_core.common import REPO_ROOT, atomic_write_json, offline_env


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository whose dvc.yaml, params and data to use")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=report_path("rl_step"))
    a = ap.parse_args(argv)
    if a.steps < 1:
        ap.error("--steps must be >= 1")
    offline_env()
    from nanochat_core import dvcfile, rl, stages
    from nanochat_core.checkpoint import load_model
    from nanochat_core.common import read_jsonl
    from nanochat_core.engine import LIMIT_MASKED
    from nanochat_core.inference import refrag_rollouts
    from nanochat_core.params import load_params
    from nanochat_core.retrieval import KnowledgeBase
    from nanochat_core.tokenizer import Tokenizer
    from nanochat_core.train import resolve_device

    root = a.root.resolve()
    paths = {k: root / v for k, v in dvcfile.stage_paths("refrag_finetune", dvcfile.load(root / "dvc.yaml")).items()}
    if not paths["sft"].exists():
        raise SystemExit(f"{paths['sft']} does not exist; run `dvc repro refrag_finetune` in {root} first")
    p = load_params(root / "params.yaml")["refrag_finetune"]
    tok = Tokenizer.load(paths["tokenizer"] / "tokenizer.json")
    kb = KnowledgeBase.load(paths["kb"])
    qs, _ = stages.rl_pool(p, read_jsonl(paths["qa"] / "train.jsonl"), stages.rl_questions(p, paths["qa"]))
    model, _ = load_model(paths["sft"], tok, resolve_device(p["device"]))
    w = rl.reward_weights(p)
    banned = [tok.encode_special(t) for t in LIMIT_MASKED]
    pad, G, Q, R = tok.get_bos_token_id(), p["rl_group_size"], p["rl_questions_per_step"], p["rl_rows_per_pass"]
    rng = random.Random(f"rl:{p['rl_seed']}")

    def in_turns(s, fn, ways):  # {way: (fn(way), seconds)}; the ways take turns at going first (the warm caches)
        out = {}
        for way in (ways if s % 2 == 0 else ways[::-1]):
            t = time.perf_counter()
            res = fn(way)
            out[way] = (res, time.perf_counter() - t)
        return out

    def backward(per_pass):  # the gradient of one step, the old way (None) or train_rl's
        model.zero_grad(set_to_none=True)
        if per_pass is None:  # one pass over every row, flat ones too: what train_rl did before passes
            rl.policy_loss(model, rows, adv, pad, None, p["rl_temperature"], banned)[0].backward()
        else:
            rl.policy_backward(model, rows, adv, pad, None, p["rl_temperature"], banned, rows_per_pass=per_pass)
        return [torch.zeros_like(q) if q.grad is None else q.grad.clone() for q in model.parameters()]

    steps = []
    for s in range(a.steps):
        batch = [q for q in (qs[rng.randrange(len(qs))] for _ in range(Q)) for _ in range(G)]
        model.eval()
        roll = in_turns(s, lambda n: [r for j in range(0, len(batch), n) for r in refrag_rollouts(
            model, tok, batch[j:j + n], kb, p["k"], p["retriever"], p["max_hops"], p["rl_max_new_tokens"],
            temperature=p["rl_temperature"], seed=s * 1009 + j, copy=p["rl_copy_guard"])], (len(batch), R))
        rows = roll[R][0]  # both backwards score the passes' rows
        model.train()
        adv = rl.group_advantages([rl.reward(q, r, w)["reward"] for q, r in zip(batch, rows)], G)
        back = in_turns(s, backward, (None, R))
        grads = [back[None][0], back[R][0]]
        roll, secs = [roll[len(batch)][1], roll[R][1]], [back[None][1], back[R][1]]
        diff = max(float((x - y).abs().max()) for x, y in zip(*grads))
        scale = max(float(x.abs().max()) for x in grads[0])
        lens = [len(r["prompt"]) + len(r["tokens"]) for r in rows]
        steps.append({"rollout_one_pass_s": roll[0], "rollout_passes_s": roll[1],
                      "backward_one_pass_s": secs[0], "backward_sorted_passes_s": secs[1],
                      "flat_rows": int((adv == 0).sum()), "rows": len(rows), "mean_len": sum(lens) / len(lens),
                      "max_len": max(lens), "max_grad_diff": diff, "max_grad": scale})
        print(f"step {s}: rollouts one pass {roll[0]:.2f}s, passes {roll[1]:.2f}s | backward one pass {secs[0]:.2f}s, sorted passes {secs[1]:.2f}s | "
              f"flat rows {steps[-1]['flat_rows']}/{len(rows)} | max grad diff {diff:.2e} (max grad {scale:.2e})", flush=True)
    mean = lambda k: sum(x[k] for x in steps) / len(steps)
    one, passes = mean("rollout_one_pass_s") + mean("backward_one_pass_s"), mean("rollout_passes_s") + mean("backward_sorted_passes_s")
    report = {"root": str(root), "machine": platform.node(), "torch_threads": torch.get_num_threads(),
              "rows_per_pass": R, "steps": steps, "step_s_one_pass": one, "step_s_passes": passes, "step_speedup": one / passes,
              "rollout_speedup": mean("rollout_one_pass_s") / mean("rollout_passes_s"),
              "backward_speedup": mean("backward_one_pass_s") / mean("backward_sorted_passes_s")}
    print(f"step {one:.2f}s -> {passes:.2f}s ({report['step_speedup']:.2f}x; rollouts {report['rollout_speedup']:.2f}x, "
          f"backward {report['backward_speedup']:.2f}x)")
    atomic_write_json(a.out, report)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
