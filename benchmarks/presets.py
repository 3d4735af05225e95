"""The d20 presets, for real: each one's model is built and counted, and its memory per GPU at
the preset's own batch is estimated. Writes benchmarks/results/presets.json and prints the
README's table. (tests/test_presets_d20.py, a slow test, also takes 2 optimizer steps of each on
the CPU: Muon's Newton-Schulz on 20 layers of 1280-wide matrices is minutes per step there.)

    python -m benchmarks.presets                  # every *_d20 preset (~5 min, ~10 GB RAM)
    python -m benchmarks.presets transformer_d20  # one

Memory per GPU (bf16 autocast, fp32 master weights, no activation recomputation):
  weights 4 B + gradients 4 B + optimizer state per parameter (Muon: 4 B of momentum for the
  matrices; AdamW: 8 B for embeddings, unembedding and scalars), plus activations. The
  activation bytes per token are counted here: what autograd saves for backward in one fp32
  forward of our pure-PyTorch path (bf16 halves it; mamba-ssm's fused kernels save less than our
  Mamba scans). Scaled to batch_size x sequence_len tokens of the preset's pretrain (one
  micro-batch: gradient accumulation does not add activations).
"""
import argparse
import os
from pathlib import Path

import torch

from nanochat_core.common import REPO_ROOT, atomic_write_json
from nanochat_core.model import GPT, GPTConfig
from nanochat_core.presets import apply_preset, list_presets

OUT = Path(__file__).parent / "results" / "presets.json"


def build(name):
    """(model, params) for preset `name` (merged into params.yaml and validated), built on the CPU."""
    params = apply_preset(name, REPO_ROOT / "params.yaml", write=False)
    torch.manual_seed(0)
    return GPT(GPTConfig.from_dict(params["model"])), params


def counts(model):
    total = model.num_params()
    emb = model.transformer.wte.weight.numel()
    head = model.lm_head.weight.numel()
    muon = sum(p.numel() for g in _matrix_groups(model) for p in g)
    return {"params": total, "non_embedding": total - emb - head, "muon_params": muon, "adamw_params": total - muon}


def _matrix_groups(model):
    opts = model.setup_optimizers()
    return [g["params"] for o in opts if type(o).__name__ == "Muon" for g in o.param_groups]


def two_steps(model, seq_len=64):
    """2 optimizer steps at batch 1 on CPU; returns both losses and how many of the parameter
    tensors moved (a step that changes nothing is not a step)."""
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


def activation_bytes_per_token(model, L=64):
    """fp32 bytes that one forward at batch 1, length L saves for backward, per token: every
    tensor autograd keeps (counted once per storage). At L=64 attention's L x L scores are ~2%
    of it, and on a GPU flash attention does not keep them at all."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t
    x = torch.zeros((1, L), dtype=torch.long)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, x)
    del loss
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total -= sum(nb for ptr, nb in seen if ptr in params)  # weights are not activations
    return total / L


def report(name):
    model, params = build(name)
    c = counts(model)
    act = activation_bytes_per_token(model)
    del model
    p = params["pretrain"]
    tokens = p["batch_size"] * params["model"]["sequence_len"]
    static = 8 * c["params"] + 4 * c["muon_params"] + 8 * c["adamw_params"]
    est = static + act / 2 * tokens
    return {"preset": name, "block_pattern": params["model"]["block_pattern"], **c,
            "nproc_per_node": params["distributed"]["nproc_per_node"], "batch_size_per_gpu": p["batch_size"],
            "sequence_len": params["model"]["sequence_len"], "activation_bytes_per_token_fp32": act,
            "static_gb": static / 1e9, "est_gb_per_gpu": est / 1e9}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("presets", nargs="*")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    names = a.presets or [n for n in list_presets() if n.endswith("_d20")]
    rows = []
    for n in names:
        rows.append(report(n))
        r = rows[-1]
        print(f"{n}: {r['params'] / 1e6:.1f}M params, ~{r['est_gb_per_gpu']:.0f} GB per GPU", flush=True)
    atomic_write_json(a.out, {"presets": rows, "torch": torch.__version__})
    print("\n| preset | layers | params | non-embedding | est. memory per GPU (bf16, batch x seq) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['block_pattern']} | {r['params'] / 1e6:.0f}M | {r['non_embedding'] / 1e6:.0f}M | "
              f"{r['est_gb_per_gpu']:.0f} GB ({r['batch_size_per_gpu']} x {r['sequence_len']}) |")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
