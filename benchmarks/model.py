"""Model benchmark: training throughput and memory of T-only, M-only (mamba1, mamba2) and
"TTMM" at equal parameter count, and decode latency vs context length.

    python -m benchmarks.model [--quick] [--device cpu|cuda]

Writes benchmarks/results/model.json. Each (config, length) runs in its own subprocess so peak
memory (ru_maxrss on CPU, max_memory_allocated on CUDA) belongs to that run alone.
Targets, checked as ratios from this one run:
  - at L=4096, M-only (mamba2) fwd+bwd tokens/s >= 1.5x T-only
  - M-only decode ms/token at context 2048 / at context 128 <= 1.2
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from benchmarks import report_path
from nanochat_core.common import REPO_ROOT, atomic_write_json
from nanochat_core.model import GPT, GPTConfig, InferenceCache
from nanochat_core.model.mamba import _mamba_ssm

VOCAB = 8192
DEPTH = 4
BASE_EMBD = 256  # the T-only model's width; the others are sized to its parameter count
CONFIGS = {
    "T": dict(block_pattern="TTTT"),
    "M_mamba1": dict(block_pattern="MMMM", ssm="mamba1"),
    "M_mamba2": dict(block_pattern="MMMM", ssm="mamba2"),
    "TTMM_mamba2": dict(block_pattern="TTMM", ssm="mamba2"),
}


def build_config(name, n_embd):
    return GPTConfig(vocab_size=VOCAB, n_layer=DEPTH, n_embd=n_embd, n_head=4, n_kv_head=4, d_state=16, headdim=32,
                     chunk_size=64, sequence_len=4096, **CONFIGS[name])


def count_params(cfg):
    with torch.device("meta"):
        return GPT(cfg).num_params()


def matched_width(name, target):
    # Widths stay multiples of 16 so heads (4) and Mamba-2 heads (headdim 32, expand 2) divide.
    best = min(range(128, 513, 16), key=lambda d: abs(count_params(build_config(name, d)) - target))
    return best


def peak_mem_mb(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_train(cfg, L, device, iters, batch=1):
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    x = torch.randint(0, cfg.vocab_size, (batch, L), device=device)
    base_mem = peak_mem_mb(device)

    def step():
        loss = model(x, x)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)  # a 2-core machine's steps vary by 30%; the median ignores the outliers
    return {"tokens_per_s": batch * L / dt, "s_per_step": dt, "step_times": times, "peak_mem_mb": peak_mem_mb(device),
            "mem_before_mb": base_mem}


def run_decode(cfg, ctx, device, n_steps):
    torch.manual_seed(0)
    model = GPT(cfg).to(device).eval()
    x = torch.randint(0, cfg.vocab_size, (1, ctx), device=device)
    with torch.no_grad():
        cache = InferenceCache(model, 1, ctx + n_steps + 8)
        model(x, cache=cache)
        tok = torch.zeros(1, 1, dtype=torch.long, device=device)
        for _ in range(4):  # warm-up steps
            model(tok, cache=cache)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n_steps):
            model(tok, cache=cache)
        if device == "cuda":
            torch.cuda.synchronize()
    return {"ms_per_token": 1000 * (time.perf_counter() - t0) / n_steps}


def child(args):
    torch.set_num_threads(args.threads)
    cfg = GPTConfig.from_dict(json.loads(args.config))
    if args.mode == "train":
        r = run_train(cfg, args.L, args.device, args.iters, args.batch)
    else:
        r = run_decode(cfg, args.L, args.device, args.iters)
    print("RESULT " + json.dumps(r))


def spawn(mode, name, n_embd, L, device, iters, threads):
    return spawn_cfg(mode, build_config(name, n_embd).to_dict(), L, device, iters, threads)


def spawn_cfg(mode, cfg, L, device, iters, threads, batch=1):
    """One measurement of model config `cfg` (a GPTConfig dict) in its own process, so its peak
    memory is its own. mode: train (tokens/s and peak memory of batch x L) or decode (ms/token
    at context L, one sequence)."""
    cmd = [sys.executable, "-m", "benchmarks.model", "--child", mode, "--config", json.dumps(cfg), "--batch", str(batch),
           "--L", str(L), "--device", device, "--iters", str(iters), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (out.stderr or out.stdout)[-2000:]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="L=256,1024 only and fewer iterations (a smoke run)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3, help="rounds over the configs at each length (median kept)")
    ap.add_argument("--mamba1-long", action="store_true", help="also run Mamba-1 at L=4096 on CPU (~20 GB)")
    ap.add_argument("--out", default=str(report_path("model")))
    ap.add_argument("--child", choices=["train", "decode"], dest="mode")
    ap.add_argument("--config", help="a GPTConfig as JSON (--child)")
    ap.add_argument("--batch", type=int, default=1, help="sequences per training step (--child)")
    ap.add_argument("--L", type=int)
    ap.add_argument("--iters", type=int)
    args = ap.parse_args()
    if args.mode:
        return child(args)

    target = count_params(build_config("T", BASE_EMBD))
    widths = {n: (BASE_EMBD if n == "T" else matched_width(n, target)) for n in CONFIGS}
    params = {n: count_params(build_config(n, widths[n])) for n in CONFIGS}
    lengths = [256, 1024] if args.quick else [256, 1024, 4096]
    report = {
        "device": args.device, "torch": torch.__version__, "platform": platform.platform(), "threads": args.threads,
        "mamba_ssm_fused": bool(_mamba_ssm()) and args.device == "cuda",
        "batch_size": 1, "depth": DEPTH, "vocab_size": VOCAB,
        "configs": {n: {"block_pattern": CONFIGS[n]["block_pattern"], "ssm": CONFIGS[n].get("ssm"), "n_embd": widths[n],
                        "params": params[n], "params_vs_T": params[n] / target} for n in CONFIGS},
        "memory_note": "peak_mem_mb is the subprocess's peak RSS on CPU (includes ~torch's own footprint, "
                       "see mem_before_mb) or torch.cuda.max_memory_allocated on CUDA",
        "train": {}, "decode": {},
    }
    for L, rep in [(L, rep) for L in lengths for rep in range(args.repeats)]:
        for n in CONFIGS:
            if n == "M_mamba1" and L > 1024 and args.device == "cpu" and not args.mamba1_long:
                # The pure-PyTorch Mamba-1 scan materializes (L, d_inner, d_state) tensors for
                # backward: 5.5 GB at L=1024 here, so L=4096 would need ~20 GB on this machine.
                report["train"].setdefault(str(L), {})[n] = {"skipped": "pure-PyTorch Mamba-1 at L>1024 needs "
                                                             "~20 GB on CPU; pass --mamba1-long to run it"}
                continue
            r = spawn("train", n, widths[n], L, args.device, 1 if args.quick else 5, args.threads)
            runs = report["train"].setdefault(str(L), {}).setdefault(n, {"runs": []})["runs"]
            runs.append(r)
            ok = [x["tokens_per_s"] for x in runs if "tokens_per_s" in x]
            if ok:  # the configs take turns, `repeats` rounds: a slow spell of the machine hits all of them
                report["train"][str(L)][n].update(tokens_per_s=statistics.median(ok),
                                                  peak_mem_mb=max(x["peak_mem_mb"] for x in runs if "peak_mem_mb" in x))
            print(f"train L={L:5d} {n:12s} round {rep + 1}: {r}", flush=True)
    for n in ("T", "M_mamba2", "M_mamba1"):
        for ctx in (128, 2048):
            r = spawn("decode", n, widths[n], ctx, args.device, 20 if args.quick else 50, args.threads)
            report["decode"].setdefault(n, {})[str(ctx)] = r
            print(f"decode ctx={ctx:5d} {n:12s} {r}", flush=True)

    def tps(L, n):
        return report["train"].get(str(L), {}).get(n, {}).get("tokens_per_s")  # None when skipped

    def ms(n, c):
        return report["decode"][n][str(c)].get("ms_per_token")

    Lmax = str(max(lengths))
    ratios = {
        f"train_tokens_per_s_M_mamba2_over_T_at_L{Lmax}": _ratio(tps(Lmax, "M_mamba2"), tps(Lmax, "T")),
        f"train_tokens_per_s_M_mamba1_over_T_at_L{Lmax}": _ratio(tps(Lmax, "M_mamba1"), tps(Lmax, "T")),
        f"train_tokens_per_s_TTMM_over_T_at_L{Lmax}": _ratio(tps(Lmax, "TTMM_mamba2"), tps(Lmax, "T")),
        "decode_ms_ctx2048_over_ctx128_M_mamba2": _ratio(ms("M_mamba2", 2048), ms("M_mamba2", 128)),
        "decode_ms_ctx2048_over_ctx128_M_mamba1": _ratio(ms("M_mamba1", 2048), ms("M_mamba1", 128)),
        "decode_ms_ctx2048_over_ctx128_T": _ratio(ms("T", 2048), ms("T", 128)),
    }
    report["ratios"] = ratios
    report["targets"] = {
        "M_mamba2_train_tokens_per_s_at_4096_ge_1.5x_T": (ratios.get("train_tokens_per_s_M_mamba2_over_T_at_L4096") or 0) >= 1.5
        if "4096" in report["train"] else None,
        "M_decode_ratio_2048_over_128_le_1.2": (ratios["decode_ms_ctx2048_over_ctx128_M_mamba2"] or 9) <= 1.2,
    }
    atomic_write_json(args.out, report)
    print(json.dumps({"ratios": ratios, "targets": report["targets"]}, indent=2))
    print(f"wrote {args.out}")


def _ratio(a, b):
    return (a / b) if (a and b) else None


if __name__ == "__main__":
    main()
