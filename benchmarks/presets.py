"""The d20 presets, for real: each one's model is built, counted and trained for 2 optimizer
steps on the CPU (batch 1, a short sequence), and its memory per GPU at the preset's own batch
is estimated. Writes benchmarks/results/presets.json and prints the README's table.

    python -m benchmarks.presets                  # every *_d20 preset (~2 min, ~10 GB RAM)
    python -m benchmarks.presets transformer_d20  # one

Memory per GPU (bf16 autocast, fp32 master weights, no activation recomputation):
  weights 4 B + gradients 4 B + optimizer state per parameter (Muon: 4 B of momentum for the
  matrices; AdamW: 8 B for embeddings, unembedding and scalars), plus activations. The
  activation bytes per token are measured here: the peak RSS of a forward+backward in fp32 at
  two sequence lengths, whose difference per token is the activation cost (the static part
  cancels); bf16 halves it. Scaled to batch_size x sequence_len tokens of the preset's
  pretrain (one micro-batch: gradient accumulation does not add activations).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from nanochat_core.common import REPO_ROOT, atomic_write_json
from nanochat_core.model import GPT, GPTConfig
from nanochat_core.presets import deep_merge, list_presets, load_preset

OUT = Path(__file__).parent / "results" / "presets.json"


def preset_params(name):
    base = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    return deep_merge(base, load_preset(name))


def build(name):
    """(model, params) for preset `name`, built on the CPU."""
    params = preset_params(name)
    torch.manual_seed(0)
    return GPT(GPTConfig.from_dict(params["model"])), params


def counts(model):
    total = model.num_params()
    emb = model.transformer.wte.weight.numel()
    head = model.lm_head.weight.numel() if getattr(model, "lm_head", None) is not None else 0
    muon = sum(p.numel() for g in _matrix_groups(model) for p in g)
    return {"params": total, "non_embedding": total - emb - head, "muon_params": muon, "adamw_params": total - muon}


def _matrix_groups(model):
    opts = model.setup_optimizers()
    return [g["params"] for o in opts if type(o).__name__ == "Muon" for g in o.param_groups]


def two_steps(model, seq_len=64):
    """2 optimizer steps at batch 1 on CPU; returns both losses and whether every parameter
    that had a gradient moved (a step that changes nothing is not a step)."""
    opts = model.setup_optimizers()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    losses = []
    for _ in range(2):
        x = torch.randint(0, V, (1, seq_len), generator=g)
        y = torch.randint(0, V, (1, seq_len), generator=g)
        loss = model(x, y)
        loss.backward()
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    return {"losses": losses, "moved": len(moved), "n_tensors": len(before)}


def activation_bytes_per_token(name, lengths=(128, 256)):
    """fp32 activation bytes per token: peak RSS of forward+backward at two lengths, each in its
    own process (peak RSS only grows), differenced."""
    peaks = []
    for L in lengths:
        r = subprocess.run([sys.executable, "-m", "benchmarks.presets", "--child", name, "--L", str(L)],
                           capture_output=True, text=True, check=True, cwd=REPO_ROOT)
        peaks.append(json.loads(r.stdout.strip().splitlines()[-1])["peak_bytes"])
    return max(peaks[1] - peaks[0], 0) / (lengths[1] - lengths[0])


def child(name, L):
    model, _ = build(name)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    x = torch.zeros((1, L), dtype=torch.long)
    model(x, x).backward()
    print(json.dumps({"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before}))


def report(name):
    model, params = build(name)
    c = counts(model)
    steps = two_steps(model)
    act = activation_bytes_per_token(name)
    p = params["pretrain"]
    tokens = p["batch_size"] * params["model"]["sequence_len"]
    static = 8 * c["params"] + 4 * c["muon_params"] + 8 * c["adamw_params"]
    est = static + act / 2 * tokens
    return {"preset": name, "block_pattern": params["model"]["block_pattern"], **c, **steps,
            "nproc_per_node": params["distributed"]["nproc_per_node"], "batch_size_per_gpu": p["batch_size"],
            "sequence_len": params["model"]["sequence_len"], "activation_bytes_per_token_fp32": act,
            "static_gb": static / 1e9, "est_gb_per_gpu": est / 1e9}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("presets", nargs="*")
    ap.add_argument("--child")
    ap.add_argument("--L", type=int)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if a.child:
        return child(a.child, a.L)
    names = a.presets or [n for n in list_presets() if n.endswith("_d20")]
    rows = []
    for n in names:
        rows.append(report(n))
        r = rows[-1]
        print(f"{n}: {r['params'] / 1e6:.1f}M params, losses {r['losses'][0]:.3f} -> {r['losses'][1]:.3f}", flush=True)
    atomic_write_json(a.out, {"presets": rows, "torch": torch.__version__})
    print("\n| preset | layers | params | non-embedding | est. memory per GPU (bf16, batch x seq) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['block_pattern']} | {r['params'] / 1e6:.0f}M | {r['non_embedding'] / 1e6:.0f}M | "
              f"{r['est_gb_per_gpu']:.0f} GB ({r['batch_size_per_gpu']} x {r['sequence_len']}) |")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
