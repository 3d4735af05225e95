"""The architecture study (Table 2): T-only, M-only (Mamba-2) and two hybrids (TMTM, the
pipeline's, and TMMM) at equal non-embedding parameters (within 5%), equal training tokens and
their own best learning rate, asked how many retrieved documents each can read.

    python -m benchmarks.architectures --jobs 18 --device cuda  # train and evaluate every cell, then report
    python -m benchmarks.architectures --cost           # CPU cost at the lengths each k needs, then report
    python -m benchmarks.architectures --report         # reports/architectures.{md,json}, plots/docs_in_context.png

It runs on the pipeline's own data (made with `dvc repro build_kb` when missing); each cell
trains its tokenizer as pretrain does. A cell is one
architecture x matrix learning rate x seed through the pipeline's own stage functions with
params.yaml's schedule: pretrain -> midtrain -> rag_finetune, where rag_finetune shows k drawn
from 1-8 documents (`k_min: 1, k: 8`). Then held-out single-hop RAG EM at k = 1, 2, 4, 8, 16
(16 is past the longest training conversation) on val and test, and at a fixed total context:
the tokens of the top-4 documents, filled instead with one-sentence passages (more, shorter
documents). Each cell writes benchmarks/results/architectures/<cell>.json; --jobs runs cells as
parallel processes (on one GPU, or CPU cores), and a finished cell is not rerun.
Choosing: each architecture's learning rate is the one with the best val EM (mean over
k = 1, 2, 4, 8 and both seeds); test only reports. k90 is the largest k whose EM is >= 0.9 x
the architecture's EM at k = 1.
"""
import argparse
import copy
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import report_path
from nanochat_core.common import REPO_ROOT, atomic_write_json, atomic_write_text, read_jsonl

# Widths matched on non-embedding parameters (GPT.num_params minus wte and lm_head): T 836k, TMTM
# 866k, MMMM 836k, TMMM 799k. T needs width 132 (12 d^2 per layer), hence 6 heads of 22 for even RoPE halves;
# M-only needs headdim 16 for expand x 120 to split into heads.
ARCHS = {
    "T": dict(block_pattern="TTTT", n_embd=132, n_head=6, n_kv_head=6),
    "hybrid": dict(block_pattern="TMTM", n_embd=128),
    "M": dict(block_pattern="MMMM", n_embd=120, headdim=16),
    "hybrid_1T": dict(block_pattern="TMMM", n_embd=120, headdim=16),  # 799k: one attention layer in four
}
HYBRIDS = ("hybrid", "hybrid_1T")
LRS = (0.0025, 0.005, 0.01, 0.02, 0.04)  # matrix (Muon) learning rate of all three stages; params.yaml's is 0.02
SEEDS = (0, 1)  # added x1000 to each stage's seed: other init, data order and training sets
KS = (1, 2, 4, 8, 16)
SELECT_KS = (1, 2, 4, 8)  # the trained range: what val chooses the learning rate on
FIXED_K = 4  # the fixed total context is this many full documents' tokens
STAGES = ("pretrain", "midtrain", "rag_finetune")
RESULTS = report_path("architectures").with_suffix("")  # benchmarks/results/architectures/
def pipeline_paths():
    """The pipeline's corpus, QA splits and KB, as dvc.yaml names them (the one place a path is written)."""
    from nanochat_core import dvcfile
    stages = dvcfile.load(REPO_ROOT / "dvc.yaml")
    prep, kb = dvcfile.stage_paths("prepare_documents", stages), dvcfile.stage_paths("build_kb", stages)
    return {"corpus": REPO_ROOT / prep["corpus"], "qa": REPO_ROOT / prep["qa"], "kb": REPO_ROOT / kb["kb"]}


def cell_name(arch, lr, seed):
    return f"{arch}_lr{lr:g}_s{seed}"


def cell_params(arch, lr, seed, device="auto", scale=1.0):
    """params.yaml with the cell's model, learning rate and seeds; `scale` shortens every
    schedule (tests and smoke runs only)."""
    from nanochat_core.params import load_params
    params = copy.deepcopy(load_params(REPO_ROOT / "params.yaml"))
    params["model"].update(ARCHS[arch])
    for s in STAGES:
        sec = params[s]
        sec.update(matrix_lr=lr, seed=sec["seed"] + 1000 * seed, device=device, checkpoint_every=0, keep_last=1)
        sec["steps"] = max(2, round(sec["steps"] * scale))
        sec["eval_every"] = 0
        if scale < 1 and "drills" in sec:
            sec["drills"] = max(20, round(sec["drills"] * scale))
    params["rag_finetune"].update(k_min=1, k=8)
    return params


def non_embedding_params(model_cfg):
    from nanochat_core.model import GPT, GPTConfig
    with torch.device("meta"):
        m = GPT(GPTConfig.from_dict(model_cfg))
    return m.num_params() - m.transformer.wte.weight.numel() - m.lm_head.weight.numel()


# ------------------------------------------------------------------------------ one cell

def passages(kb):
    """One-sentence passages of the KB's documents: the same facts as shorter documents (each
    sentence of a world document names its subject, so a passage stands on its own)."""
    from nanochat_core.retrieval import KnowledgeBase
    out = []
    for d in kb.docs:
        for i, s in enumerate(x for x in re.split(r"(?<=\.)\s+", d["text"]) if x.strip()):
            out.append({"id": f"{d['id']}#{i}", "title": d.get("title", ""), "text": s, "source": "passage"})
    return KnowledgeBase.build(out, None, ["bm25"], kb.config)


def answer_blocks(model, tok, questions, blocks, batch_size, max_new_tokens=24):
    """Greedy answers with a given documents block per question (inference.py's RAG mode, any block)."""
    from nanochat_core.engine import Engine
    from nanochat_core.inference import final_text, parse_answer
    from nanochat_core.rag import reading_conversation
    end = tok.encode_special("<|assistant_end|>")
    prompts = [tok.render_for_completion(reading_conversation(q, b, False)) for q, b in zip(questions, blocks)]
    preds = []
    for i in range(0, len(prompts), batch_size):
        toks, masks = Engine(model).generate_batch(prompts[i:i + batch_size], max_new_tokens, stop_tokens=[end])
        preds += [parse_answer(final_text(tok, t, m))[0] for t, m in zip(toks, masks)]
    return preds, [len(p) for p in prompts]


def evaluate_cell(model, tok, kb, pkb, questions, batch_size, ks=KS):
    """EM, gold-document recall and prompt tokens at each k, and at the fixed total context."""
    from nanochat_core.metrics import exact_match, f1
    from nanochat_core.rag import retrieve
    qtext = [q["question"] for q in questions]
    gold = [set(q["gold_doc_ids"][-1]) for q in questions]
    widest = retrieve(kb, qtext, max(ks), "bm25")
    out = {"n": len(questions), "k": {}}

    def summary(preds, lens, blocks):
        return {"em": sum(exact_match(p, q["answers"]) for p, q in zip(preds, questions)) / len(questions),
                "f1": sum(f1(p, q["answers"]) for p, q in zip(preds, questions)) / len(questions),
                "sample": [{"gold": q["answers"][0], "prediction": p} for p, q in list(zip(preds, questions))[:6]],
                "gold_shown": sum(bool(g & {d["id"].split("#")[0] for d in b}) for g, b in zip(gold, blocks)) / len(questions),
                "prompt_tokens": sum(lens) / len(lens), "docs": sum(len(b) for b in blocks) / len(blocks)}
    for k in ks:
        blocks = [w[:k] for w in widest]
        preds, lens = answer_blocks(model, tok, questions, blocks, batch_size)
        out["k"][str(k)] = summary(preds, lens, blocks)
    # Fixed total context: as many top passages as fit in the tokens of the top-FIXED_K documents.
    ranked = retrieve(pkb, qtext, 64, "bm25")
    blocks = []
    for w, r in zip(widest, ranked):
        budget = len(tok.encode_documents(w[:FIXED_K]))
        picked = []
        for p in r:
            if len(tok.encode_documents(picked + [p])) > budget:
                break
            picked.append(p)
        blocks.append(picked)
    preds, lens = answer_blocks(model, tok, questions, blocks, batch_size)
    out["fixed_context"] = summary(preds, lens, blocks)
    return out


def run_cell(arch, lr, seed, device="auto", scale=1.0, root=RESULTS, ks=KS):
    from nanochat_core import stages
    from nanochat_core.checkpoint import load_model
    from nanochat_core.retrieval import KnowledgeBase
    from nanochat_core.tokenizer import Tokenizer
    from nanochat_core.train import resolve_device
    torch.set_num_threads(max(1, int(os.environ.get("STUDY_THREADS", torch.get_num_threads()))))
    name = cell_name(arch, lr, seed)
    cell = Path(root) / name
    params = cell_params(arch, lr, seed, device, scale)
    paths = pipeline_paths()
    for path in paths.values():
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; run `dvc repro build_kb` first (the study uses the pipeline's data)")
    t0 = time.time()
    tokdir = cell / "tokenizer"
    summaries = {"pretrain": stages.pretrain(params, paths["corpus"], cell / "base", tokdir)}
    tokpath = tokdir / "tokenizer.json"
    qa_train = read_jsonl(paths["qa"] / "train.jsonl")
    kb = KnowledgeBase.load(paths["kb"])
    mid = stages.midtrain_conversations(params["midtrain"], qa_train, kb)
    summaries["midtrain"] = stages.finetune("midtrain", params, mid, cell / "base", cell / "mid", tokpath)
    rag = stages.rag_conversations(params["rag_finetune"], qa_train, kb)
    summaries["rag_finetune"] = stages.finetune("rag_finetune", params, rag, cell / "mid", cell / "rag", tokpath)
    t_train = time.time() - t0
    tok = Tokenizer.load(tokpath)
    model, _ = load_model(cell / "rag", tok, resolve_device(device))
    model.eval()
    pkb = passages(kb)
    result = {"arch": arch, "lr": lr, "seed": seed, "model": params["model"], "device": str(resolve_device(device)),
              "non_embedding_params": non_embedding_params(params["model"]), "scale": scale,
              "train_seconds": t_train,
              "stages": {s: {k: summaries[s].get(k) for k in ("final_loss", "steps", "tokens", "seconds")} for s in STAGES}}
    for split in ("val", "test"):
        qs = [q for q in read_jsonl(paths["qa"] / f"{split}.jsonl") if q["type"] == "single" and not q.get("known")]
        result[split] = evaluate_cell(model, tok, kb, pkb, qs, params["evaluate"]["batch_size"], ks)
    result["seconds"] = time.time() - t0
    atomic_write_json(Path(root) / f"{name}.json", result)
    print(f"[study] {name}: test EM by k " + " ".join(f"{k}:{v['em']:.3f}" for k, v in result["test"]["k"].items())
          + f" | {result['seconds']:.0f}s", flush=True)
    return result


def parse_cell(text):
    """'hybrid:0.0025:0' -> ("hybrid", 0.0025, 0), refusing an unknown architecture."""
    try:
        arch, lr, seed = text.split(":")
        cell = (arch, float(lr), int(seed))
    except ValueError:
        raise SystemExit(f"--cells {text!r}: write ARCH:LR:SEED, e.g. hybrid:0.0025:0") from None
    if arch not in ARCHS:
        raise SystemExit(f"--cells {text!r}: unknown architecture {arch!r}; one of {', '.join(ARCHS)}")
    return cell


def all_cells():
    return [(a, lr, s) for s in SEEDS for a in ARCHS for lr in LRS]


def run_all(jobs, device, scale, root=RESULTS, cells=None, ks=KS):
    """Every cell (or those in `cells`) not finished yet, `jobs` at a time, each in its own process."""
    todo = [c for c in (cells or all_cells()) if not (Path(root) / f"{cell_name(*c)}.json").exists()]
    Path(root).mkdir(parents=True, exist_ok=True)
    running, failed = [], []
    env = {**os.environ, "STUDY_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, jobs)))}
    t0 = last = time.time()
    while todo or running:
        while todo and len(running) < jobs:
            a, lr, s = todo.pop(0)
            with open(Path(root) / f"{cell_name(a, lr, s)}.log", "w") as log:  # the child keeps its own handle
                cmd = [sys.executable, "-m", "benchmarks.architectures", "--cell", a, str(lr), str(s),
                       "--device", device, "--scale", str(scale), "--root", str(root), "--ks", *map(str, ks)]
                running.append(((a, lr, s), subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)))
        time.sleep(2)
        if time.time() - last > 60:  # progress: each running cell's latest log line
            last = time.time()
            for (a, lr, s), _ in running:
                tail = (Path(root) / f"{cell_name(a, lr, s)}.log").read_text().strip().splitlines()[-1:] or [""]
                print(f"[study {time.time() - t0:5.0f}s] {cell_name(a, lr, s)}: {tail[0][:150]}", flush=True)
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                if item[1].returncode:
                    failed.append(cell_name(*item[0]))
                    print(f"[study] {cell_name(*item[0])} failed: see {root}/{cell_name(*item[0])}.log", flush=True)
                else:
                    print(f"[study] {cell_name(*item[0])} done", flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} cells failed: {failed}")


# ------------------------------------------------------------------------------ cost

def cache_bytes(model_cfg, ctx):
    """Inference cache bytes for one sequence of `ctx` tokens (fp32): K/V grow with ctx, SSM states do not."""
    from nanochat_core.model import GPT, GPTConfig, InferenceCache
    with torch.device("meta"):
        m = GPT(GPTConfig.from_dict(model_cfg))
    cache = InferenceCache(m, 1, ctx, device="meta", dtype=torch.float32)
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in layer.values())


def run_cost(lengths_by_arch, threads, rounds=3):
    """Training tokens/s and peak RSS (forward + backward of rag_finetune's batch of L-token
    sequences), decode ms/token at context L and cache bytes, per architecture and length, each
    measurement in its own process (benchmarks.model's). The architectures take turns, `rounds`
    times, and each figure is the median of its rounds: a slow spell of the machine then hits
    every architecture instead of one."""
    import statistics

    from benchmarks.model import spawn_cfg
    batch = cell_params("T", 0.02, 0)["rag_finetune"]["batch_size"]
    out = {"threads": threads, "torch": torch.__version__, "batch": batch, "rounds": rounds, "arch": {}}
    runs = {}
    for rnd in range(rounds):
        for arch, lengths in lengths_by_arch.items():
            cfg = {**cell_params(arch, 0.02, 0)["model"], "sequence_len": max(lengths)}
            for L in lengths:
                tr = spawn_cfg("train", cfg, L, "cpu", 5, threads, batch)
                de = spawn_cfg("decode", cfg, L, "cpu", 60, threads)
                runs.setdefault((arch, L), []).append((tr, de))
                print(f"[cost] round {rnd + 1}/{rounds} {arch:9s} L={L:5d} train {tr.get('tokens_per_s', tr)} "
                      f"decode {de.get('ms_per_token', de)}", flush=True)

    def med(vals):
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None
    for (arch, L), rs in runs.items():
        cfg = cell_params(arch, 0.02, 0)["model"]
        out["arch"].setdefault(arch, {})[str(L)] = {
            "train_tokens_per_s": med([tr.get("tokens_per_s") for tr, _ in rs]),
            "train_peak_mem_mb": med([tr.get("peak_mem_mb") for tr, _ in rs]),
            "decode_ms_per_token": med([de.get("ms_per_token") for _, de in rs]), "cache_bytes": cache_bytes(cfg, L)}
    return out


# ------------------------------------------------------------------------------ report

def load_cells(root=RESULTS):
    return [json.loads(p.read_text()) for p in sorted(Path(root).glob("*.json"))]


def k90(ems):
    """The largest k whose EM is >= 0.9 x the EM at k = 1 ({k: em}, k as int); None when EM at
    k = 1 is 0 (nothing to keep 90% of)."""
    base = ems[1]
    if base <= 0:
        return None
    ok = [k for k, e in ems.items() if e >= 0.9 * base]
    return max(ok) if ok else None


def grid(cells):
    """The k values every cell was evaluated at (KS, or more with --ks)."""
    return sorted(set.intersection(*[{int(k) for k in c["test"]["k"]} for c in cells])) if cells else list(KS)


def summary_ks(s):
    """The k grid of a summarize() result (every architecture shares it)."""
    return next(iter(s.values()))["ks"] if s else list(KS)


def summarize(cells):
    """Per architecture: the learning rate val chose, and that rate's test figures for each seed."""
    from nanochat_core.metrics import wilson_interval
    out, ks = {}, grid(cells)
    for arch in ARCHS:
        mine = [c for c in cells if c["arch"] == arch]
        if not mine:
            continue
        val = {}
        for c in mine:
            val.setdefault(c["lr"], []).append(sum(c["val"]["k"][str(k)]["em"] for k in SELECT_KS) / len(SELECT_KS))
        val_mean = {lr: sum(v) / len(v) for lr, v in val.items()}
        best = max(sorted(val_mean), key=lambda lr: val_mean[lr])
        chosen = sorted((c for c in mine if c["lr"] == best), key=lambda c: c["seed"])
        n = chosen[0]["test"]["n"]
        rows = {}
        for k in [str(k) for k in ks] + ["fixed_context"]:
            per_seed = [(c["test"]["k"][k] if k != "fixed_context" else c["test"]["fixed_context"]) for c in chosen]
            ems = [r["em"] for r in per_seed]
            hits = round(sum(e * n for e in ems))
            lo, hi = wilson_interval(hits, n * len(ems))
            rows[k] = {"em": sum(ems) / len(ems), "em_seeds": ems, "em_lo": lo, "em_hi": hi,
                       "f1": sum(r.get("f1", float("nan")) for r in per_seed) / len(per_seed),
                       "gold_shown": sum(r["gold_shown"] for r in per_seed) / len(per_seed),
                       "prompt_tokens": sum(r["prompt_tokens"] for r in per_seed) / len(per_seed),
                       "docs": per_seed[0]["docs"]}
        curve = {k: rows[str(k)]["em"] for k in ks}
        missing = [cell_name(arch, lr, sd) for lr in LRS for sd in SEEDS
                   if not any(c["lr"] == lr and c["seed"] == sd for c in mine)]
        out[arch] = {"lr": best, "val_em_by_lr": val_mean, "seeds": [c["seed"] for c in chosen], "n_test": n,
                     "missing_cells": missing, "lr_at_grid_edge": best in (min(LRS), max(LRS)),
                     "non_embedding_params": chosen[0]["non_embedding_params"], "model": chosen[0]["model"],
                     "device": chosen[0]["device"], "train_seconds": [c["train_seconds"] for c in chosen],
                     "test": rows, "k90": k90(curve),
                     "k90_seeds": [k90({k: c["test"]["k"][str(k)]["em"] for k in ks}) for c in chosen], "ks": ks}
    return out


def separated(a, b):
    """Whether two architectures' seed ranges do not overlap (the difference exceeds seed noise)."""
    return max(a) < min(b) or max(b) < min(a)


def _k90_text(a):
    return "none (EM 0 at k=1)" if a["k90"] is None else (f">={a['k90']}" if a["k90"] == max(a["ks"]) else str(a["k90"]))


def _verdict(held, undecided=False):
    return "undecided" if undecided else ("held" if held else "failed")


def claims(s):
    """The three pre-registered claims, each held, failed or undecided (a k90 that is undefined,
    or that the k grid cannot resolve), with its figures. The hybrid claims are judged for each
    hybrid: TMTM, the pipeline's default, and TMMM."""
    out = []
    t = s.get("T")
    top = max(summary_ks(s))
    for name in HYBRIDS:
        if t is None or name not in s:
            continue
        h = s[name]
        pat = h["model"]["block_pattern"]
        undecided = t["k90"] is None or h["k90"] is None or (t["k90"] == top and h["k90"] == top)
        out.append({"claim": f"hybrid ({pat}) k90 >= Transformer k90",
                    "verdict": _verdict(not undecided and h["k90"] >= t["k90"], undecided),
                    "figures": f"{pat} {_k90_text(h)} (seeds {h['k90_seeds']}), T {_k90_text(t)} (seeds {t['k90_seeds']})"})
        e16h, e16t = h["test"][str(top)], t["test"][str(top)]
        out.append({"claim": f"hybrid ({pat}) held-out RAG EM at k={top} >= Transformer's", "verdict": _verdict(e16h["em"] >= e16t["em"]),
                    "figures": f"{pat} {e16h['em']:.3f} (seeds {_f(e16h['em_seeds'])}), T {e16t['em']:.3f} "
                               f"(seeds {_f(e16t['em_seeds'])}); beyond seed noise: "
                               f"{'yes' if separated(e16h['em_seeds'], e16t['em_seeds']) else 'no'}"})
    if t is not None and "M" in s:
        m = s["M"]
        # M's k90 at the grid's top only bounds it from below: undecided if 3 x T's k90 lies past the grid.
        undecided = t["k90"] is None or m["k90"] is None or (m["k90"] == top and 3 * t["k90"] > top)
        out.append({"claim": "pure Mamba k90 >= 3 x Transformer k90 (the seeds' claim)",
                    "verdict": _verdict(not undecided and m["k90"] >= 3 * t["k90"], undecided),
                    "figures": f"M {_k90_text(m)} (seeds {m['k90_seeds']}; EM at k=1 {m['test']['1']['em']:.3f}), "
                               f"T {_k90_text(t)} (seeds {t['k90_seeds']}; EM at k=1 {t['test']['1']['em']:.3f})"})
    return out


def _n(x, fmt):
    return "n/a" if x is None else format(x, fmt)


def _f(xs):
    return "/".join(f"{x:.3f}" for x in xs)


def write_report(cells, cost, commit, md_path, json_path, plot_path):
    s = summarize(cells)
    ks = summary_ks(s)  # the columns: Table 2's k values, or the longer grid of --ks
    cl = claims(s)
    lines = ["# Table 2: architectures at equal parameters and training tokens", "",
             f"`python -m benchmarks.architectures` at {commit}; {len(cells)} of {len(all_cells())} cells "
             f"({len(ARCHS)} architectures x {len(LRS)} matrix learning rates x {len(SEEDS)} seeds), trained on "
             + ", ".join(f"{d} ({sum(c['device'] == d for c in cells)})" for d in sorted({c["device"] for c in cells}))
             + ". Each cell: params.yaml's pretrain -> midtrain -> "
             "rag_finetune with k drawn from 1-8 documents; held-out single-hop RAG EM (BM25 top-k) on every test "
             "question; the learning rate is each architecture's best on val (mean EM over k = 1, 2, 4, 8 and both "
             "seeds). EM is the mean of the two seeds, then each seed's EM, then a 95% Wilson interval over the two "
             "seeds' answers pooled (it counts 2 x n answers as independent, so it is narrower than one that "
             "allowed for seed variance: compare the seeds themselves).", ""]
    for arch, a in s.items():
        if a["missing_cells"]:
            lines.append(f"- **{arch}: {len(a['missing_cells'])} cells missing** ({', '.join(a['missing_cells'])}): its "
                         "learning rate was chosen among the others.")
        if a["lr_at_grid_edge"]:
            lines.append(f"- {arch} chose {a['lr']:g}, an edge of the grid {list(LRS)}: a rate beyond it might do better.")
    lines += ["",
             "| arch | pattern | width | non-emb. params | lr (val EM by lr) | " + " | ".join(f"EM k={k}" for k in ks)
             + " | k90 (seeds) |", "|" + "---|" * (6 + len(ks))]
    for arch, a in s.items():
        t = a["test"]
        lrs = ", ".join(f"{lr:g}: {v:.3f}" for lr, v in sorted(a["val_em_by_lr"].items()))
        lines.append(f"| {arch} | {a['model']['block_pattern']} | {a['model']['n_embd']} | {a['non_embedding_params']:,} | "
                     f"**{a['lr']:g}** ({lrs}) | "
                     + " | ".join(f"{t[str(k)]['em']:.3f} ({_f(t[str(k)]['em_seeds'])}) [{t[str(k)]['em_lo']:.2f}, "
                                  f"{t[str(k)]['em_hi']:.2f}]" for k in ks)
                     + f" | **{_k90_text(a)}** ({', '.join(map(str, a['k90_seeds']))}) |")
    any_arch = next(iter(s.values()), None)
    if any_arch:
        t = any_arch["test"]
        lines += ["", "Context each k needs (mean prompt tokens, the same documents for every architecture) and how "
                  "often BM25's top-k holds the gold document:", "",
                  "| k | " + " | ".join(str(k) for k in ks) + " |", "|---|" + "---|" * len(ks),
                  "| prompt tokens | " + " | ".join(f"{t[str(k)]['prompt_tokens']:.0f}" for k in ks) + " |",
                  "| gold shown | " + " | ".join(f"{t[str(k)]['gold_shown']:.3f}" for k in ks) + " |"]
        fc = t["fixed_context"]
        lines += ["", f"**Fixed total context** (the tokens of the top-{FIXED_K} documents, about "
                  f"{t[str(FIXED_K)]['prompt_tokens']:.0f} prompt tokens, filled instead with one-sentence passages: "
                  f"{fc['docs']:.1f} of them on average, gold shown {fc['gold_shown']:.3f}):", "",
                  f"| arch | EM, {FIXED_K} documents | EM, same tokens as passages |", "|---|---|---|"]
        for arch, a in s.items():
            f4, fp = a["test"][str(FIXED_K)], a["test"]["fixed_context"]
            lines.append(f"| {arch} | {f4['em']:.3f} ({_f(f4['em_seeds'])}) | {fp['em']:.3f} ({_f(fp['em_seeds'])}) "
                         f"[{fp['em_lo']:.2f}, {fp['em_hi']:.2f}] |")
    lines += ["", "## The pre-registered claims", ""]
    lines += [f"- **{c['claim']}: {c['verdict']}.** {c['figures']}." for c in cl]
    if cost:
        lines += ["", f"## Cost at those lengths (CPU, {cost['threads']} threads, torch {cost['torch']}; "
                  "`python -m benchmarks.architectures --cost`)", "",
                  f"Training is forward + backward of {cost.get('batch', 1)} sequences of L tokens (the median of 5 "
                  f"steps; each figure the median of {cost.get('rounds', 1)} rounds in which the architectures take "
                  "turns); memory is the measuring process's "
                  "peak RSS (torch's own footprint included); decode is one token with a cache of L tokens; cache is "
                  "the inference cache of one sequence at L (fp32).", "",
                  "| arch | L | train tokens/s | vs T | peak MB | decode ms/token | vs T | cache KB |", "|---|---|---|---|---|---|---|---|"]
        ref = cost["arch"].get("T", {})
        for arch, rows in cost["arch"].items():
            for L, r in sorted(rows.items(), key=lambda kv: int(kv[0])):
                rt = ref.get(L, {})
                vs = (r["train_tokens_per_s"] / rt["train_tokens_per_s"]) if rt.get("train_tokens_per_s") else None
                vd = (r["decode_ms_per_token"] / rt["decode_ms_per_token"]) if rt.get("decode_ms_per_token") else None
                lines.append(f"| {arch} | {L} | {_n(r['train_tokens_per_s'], ',.0f')} | {_n(vs, '.2f')} | "
                             f"{_n(r['train_peak_mem_mb'], '.0f')} | {_n(r['decode_ms_per_token'], '.2f')} | {_n(vd, '.2f')} | "
                             f"{r['cache_bytes'] / 1024:.1f} |")
    lines += ["", "![EM against k](plots/docs_in_context.png)", ""]
    atomic_write_text(md_path, "\n".join(lines))
    atomic_write_json(json_path, {"commit": commit, "summary": s, "claims": cl, "cost": cost,
                                  "cells": [{k: c[k] for k in ("arch", "lr", "seed", "device", "train_seconds", "val", "test")}
                                            for c in cells]})
    plot(s, plot_path)
    return s, cl


def plot(s, path):
    ks = summary_ks(s)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arch, a in s.items():
        ems = [a["test"][str(k)]["em"] for k in ks]
        line, = axes[0].plot(ks, ems, marker="o", label=f"{arch} ({a['model']['block_pattern']}, lr {a['lr']:g})")
        for i in range(len(a["seeds"])):
            axes[0].scatter(ks, [a["test"][str(k)]["em_seeds"][i] for k in ks], color=line.get_color(), s=10, alpha=0.5)
        if ems[0]:
            axes[1].plot(ks, [e / ems[0] for e in ems], marker="o", color=line.get_color(), label=arch)
    axes[1].axhline(0.9, color="gray", linestyle="--", linewidth=1)
    axes[0].axvspan(8, max(ks), color="gray", alpha=0.1)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("documents in context (k); shaded: past training (1-8)")
    axes[0].set_ylabel("held-out single-hop RAG EM (test)")
    axes[1].set_ylabel("EM / EM at k=1 (dashed: k90 line)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1, help="cells trained at once, each its own process")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--scale", type=float, default=1.0, help="shorten every schedule (smoke runs; not for the table)")
    ap.add_argument("--root", default=str(RESULTS))
    ap.add_argument("--cell", nargs=3, metavar=("ARCH", "LR", "SEED"), help=argparse.SUPPRESS)  # one cell, in-process
    ap.add_argument("--cells", nargs="+", metavar="ARCH:LR:SEED", help="only these cells, e.g. hybrid:0.0025:0")
    ap.add_argument("--cost", action="store_true", help="measure CPU cost at the lengths each k needs")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--report", action="store_true", help="only write the report from the cells there")
    ap.add_argument("--ks", type=int, nargs="+", default=list(KS), help="k values to evaluate (Table 2 uses 1 2 4 8 16)")
    ap.add_argument("--reports", default=str(REPO_ROOT / "reports"), help="where architectures.{md,json} and plots/ go")
    args = ap.parse_args()
    if args.cell:
        a, lr, s = args.cell
        run_cell(a, float(lr), int(s), args.device, args.scale, args.root, tuple(args.ks))
        return
    cost_path = Path(args.root) / "cost.json"
    if not args.report and not args.cost and not all(p.exists() for p in pipeline_paths().values()):
        # A fresh clone: make the pipeline's documents, questions and KB first (two quick stages).
        print("[study] no pipeline data yet: running `dvc repro build_kb`", flush=True)
        subprocess.run([sys.executable, "-m", "dvc", "repro", "build_kb"], cwd=REPO_ROOT, check=True)
    if not args.report and not args.cost:
        cells = None
        if args.cells:
            cells = [parse_cell(c) for c in args.cells]
        run_all(args.jobs, args.device, args.scale, args.root, cells, tuple(args.ks))
    cells = [c for c in load_cells(args.root) if "lr" in c]  # cost.json sits beside the cells
    if not cells:
        raise SystemExit(f"no finished cells in {args.root}; run `python -m benchmarks.architectures` first")
    if args.cost:
        s = summarize(cells)
        lengths = {arch: sorted({int(math.ceil(a["test"][str(k)]["prompt_tokens"])) for k in KS}) for arch, a in s.items()}
        atomic_write_json(cost_path, run_cost(lengths, args.threads))
    cost = json.loads(cost_path.read_text()) if cost_path.exists() else None
    from nanochat_core.common import git_commit
    out = Path(args.reports)
    s, cl = write_report(cells, cost, git_commit()[:7], out / "architectures.md", out / "architectures.json",
                         out / "plots" / "docs_in_context.png")
    for c in cl:
        print(f"{c['claim']}: {c['verdict']} ({c['figures']})")
    print(f"wrote {out}/architectures.md, {out}/architectures.json, {out}/plots/docs_in_context.png")


if __name__ == "__main__":
    main()
