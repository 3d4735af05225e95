"""The architecture study (benchmarks/architectures.py): its fairness (equal non-embedding
parameters, equal training tokens), k90, the claims' verdicts, cache sizes and passages."""
import random

import pytest

from benchmarks import architectures as S


def test_contenders_have_equal_non_embedding_params_within_5_percent():
    t = S.non_embedding_params(S.cell_params("T", 0.02, 0)["model"])
    for arch in S.ARCHS:
        n = S.non_embedding_params(S.cell_params(arch, 0.02, 0)["model"])
        assert abs(n / t - 1) <= 0.05, (arch, n, t)
    assert {S.cell_params(a, 0.02, 0)["model"]["block_pattern"] for a in S.ARCHS} >= {"TTTT", "MMMM", "TMTM"}


def test_cells_differ_only_in_model_lr_and_seed():
    """Equal training tokens and data: every architecture gets the same schedule and seeds; a
    cell's learning rate reaches every stage; rag_finetune shows 1-8 documents."""
    cells = {a: S.cell_params(a, 0.005, 1) for a in S.ARCHS}
    for stage in S.STAGES:
        secs = [{k: v for k, v in p[stage].items()} for p in cells.values()]
        assert all(s == secs[0] for s in secs)  # identical schedules, seeds, data sizes
        assert secs[0]["matrix_lr"] == 0.005
    base = S.cell_params("T", 0.005, 0)
    assert all(cells["T"][s]["seed"] == base[s]["seed"] + 1000 for s in S.STAGES)
    assert (cells["T"]["rag_finetune"]["k_min"], cells["T"]["rag_finetune"]["k"]) == (1, 8)
    from nanochat_core.params import load_params
    shipped = load_params(S.REPO_ROOT / "params.yaml")
    for stage in S.STAGES:  # the schedule is params.yaml's: equal training tokens for every contender
        assert (cells["T"][stage]["steps"], cells["T"][stage]["batch_size"]) == (shipped[stage]["steps"], shipped[stage]["batch_size"])


@pytest.mark.parametrize("curve, expected", [
    ({1: 0.8, 2: 0.75, 4: 0.7, 8: 0.5, 16: 0.2}, 2),   # 0.72 is the line: 0.75 above, 0.70 below
    ({1: 0.5, 2: 0.3, 4: 0.3, 8: 0.46, 16: 0.1}, 8),    # the largest k above the line, not the first drop
    ({1: 0.5, 2: 0.5, 4: 0.5, 8: 0.5, 16: 0.45}, 16),   # exactly 0.9 x counts
    ({1: 0.0, 2: 0.1, 4: 0.0, 8: 0.0, 16: 0.0}, None),  # nothing to keep 90% of
])
def test_k90(curve, expected):
    assert S.k90(curve) == expected


def _arch(pattern, k90s, em16s):
    test = {str(k): {"em": 0.5, "em_seeds": [0.5, 0.5]} for k in S.KS}
    test["16"] = {"em": sum(em16s) / 2, "em_seeds": em16s}
    return {"model": {"block_pattern": pattern}, "k90": min(k90s), "k90_seeds": k90s, "test": test, "ks": list(S.KS)}


def test_claims_are_judged_as_preregistered():
    s = {"T": _arch("TTTT", [8, 8], [0.30, 0.32]), "hybrid": _arch("TMTM", [8, 4], [0.20, 0.21]),
         "M": _arch("MMMM", [8, 8], [0.4, 0.5])}
    s["hybrid"]["k90"] = 4
    got = {c["claim"]: c["verdict"] for c in S.claims(s)}
    fig = {c["claim"]: c["figures"] for c in S.claims(s)}
    assert got["hybrid (TMTM) k90 >= Transformer k90"] == "failed"  # 4 < 8
    assert got["hybrid (TMTM) held-out RAG EM at k=16 >= Transformer's"] == "failed"
    assert "beyond seed noise: yes" in fig["hybrid (TMTM) held-out RAG EM at k=16 >= Transformer's"]  # 0.20-0.21 vs 0.30-0.32
    assert got["pure Mamba k90 >= 3 x Transformer k90 (the seeds' claim)"] == "failed"  # 8 < 3 x 8
    s["T"] = _arch("TTTT", [4, 4], [0.15, 0.22])
    s["T"]["k90"], s["hybrid"]["k90"], s["M"]["k90"] = 4, 8, 16
    got = {c["claim"]: c["verdict"] for c in S.claims(s)}
    fig = {c["claim"]: c["figures"] for c in S.claims(s)}
    assert got["hybrid (TMTM) k90 >= Transformer k90"] == "held"
    assert got["hybrid (TMTM) held-out RAG EM at k=16 >= Transformer's"] == "held"
    assert "beyond seed noise: no" in fig["hybrid (TMTM) held-out RAG EM at k=16 >= Transformer's"]
    assert got["pure Mamba k90 >= 3 x Transformer k90 (the seeds' claim)"] == "held"  # 16 >= 12


def test_claims_the_k_grid_cannot_resolve_are_undecided():
    """k90 at the grid's top (16) only says >= 16: against 3 x 8 = 24 that decides nothing; and
    an EM of 0 at k=1 leaves k90 undefined."""
    s = {"T": _arch("TTTT", [8, 8], [0.3, 0.3]), "M": _arch("MMMM", [16, 16], [0.4, 0.5]),
         "hybrid": _arch("TMTM", [16, 16], [0.4, 0.4])}
    s["T"]["k90"], s["M"]["k90"], s["hybrid"]["k90"] = 8, 16, None
    got = {c["claim"]: c for c in S.claims(s)}
    m = got["pure Mamba k90 >= 3 x Transformer k90 (the seeds' claim)"]
    assert m["verdict"] == "undecided" and "M >=16" in m["figures"]
    assert got["hybrid (TMTM) k90 >= Transformer k90"]["verdict"] == "undecided"


def test_learning_rate_is_chosen_on_val_and_gaps_are_flagged():
    """summarize picks each architecture's rate by val EM even when test would pick another, and
    names the cells that are missing and a choice at the grid's edge."""
    def cell(lr, seed, val_em, test_em):
        ks = {str(k): {"em": val_em, "gold_shown": 1.0, "prompt_tokens": 10 * k, "docs": k} for k in S.KS}
        tk = {str(k): {"em": test_em, "gold_shown": 1.0, "prompt_tokens": 10 * k, "docs": k} for k in S.KS}
        fixed = {"em": 0.1, "gold_shown": 1.0, "prompt_tokens": 40, "docs": 8}
        return {"arch": "T", "lr": lr, "seed": seed, "model": {"block_pattern": "TTTT", "n_embd": 132}, "device": "cpu",
                "non_embedding_params": 1, "train_seconds": 1.0, "val": {"n": 50, "k": ks, "fixed_context": fixed},
                "test": {"n": 150, "k": tk, "fixed_context": fixed}}
    mid = sorted(S.LRS)[1]
    cells = [cell(lr, sd, 0.9 if lr == mid else 0.5, 0.2 if lr == mid else 0.8) for lr in S.LRS for sd in S.SEEDS]
    t = S.summarize(cells)["T"]
    assert t["lr"] == mid and t["test"]["1"]["em"] == 0.2 and not t["missing_cells"] and not t["lr_at_grid_edge"]
    t = S.summarize([c for c in cells if not (c["lr"] == mid and c["seed"] == 1)])["T"]
    assert t["missing_cells"] == [S.cell_name("T", mid, 1)] and t["seeds"] == [0]


def test_seed_noise_is_overlap_of_seed_ranges():
    assert S.separated([0.1, 0.2], [0.3, 0.4]) and not S.separated([0.1, 0.35], [0.3, 0.4])


def test_cache_bytes_grow_with_context_for_attention_only():
    t, m = S.cell_params("T", 0.02, 0)["model"], S.cell_params("M", 0.02, 0)["model"]
    head_dim = t["n_embd"] // t["n_head"]
    assert S.cache_bytes(t, 100) == 4 * 2 * 4 * t["n_kv_head"] * 100 * head_dim  # layers x (K, V) x fp32
    assert S.cache_bytes(m, 100) == S.cache_bytes(m, 1000) > 0


def test_passages_are_one_sentence_naming_their_subject():
    from nanochat_core.data.world import build_world
    from nanochat_core.retrieval import KnowledgeBase
    w = build_world(4, n_people=30, n_cities=6, n_countries=2, n_companies=6, n_universities=3)
    kb = KnowledgeBase.build(w.kb_documents(), None, ["bm25"])
    pkb = S.passages(kb)
    assert len(pkb.docs) > 2 * len(kb.docs)
    for p in random.Random(0).sample(pkb.docs, 50):
        parent = kb.get(p["id"].split("#")[0])
        assert p["text"] in parent["text"] and p["text"].count(". ") == 0 and parent["title"] in p["text"]


def test_cells_option_is_checked():
    assert S.parse_cell("hybrid:0.0025:1") == ("hybrid", 0.0025, 1)
    with pytest.raises(SystemExit, match="unknown architecture 'X'"):
        S.parse_cell("X:0.01:0")
    with pytest.raises(SystemExit, match="write ARCH:LR:SEED"):
        S.parse_cell("hybrid-0.01")


@pytest.mark.slow
def test_the_study_runs_end_to_end_from_its_command(tmp_path):
    """`python -m benchmarks.architectures` on two cells at a tiny scale: each cell trains through
    the pipeline's stages, is evaluated at every k and at the fixed context, and the report, its
    JSON and the plot are written (~5 min on 2 cores; needs `dvc repro build_kb`'s data, which the
    command makes itself on a fresh clone)."""
    import json
    import subprocess
    import sys

    from nanochat_core.common import REPO_ROOT
    root, reports = tmp_path / "cells", tmp_path / "reports"
    cmd = [sys.executable, "-m", "benchmarks.architectures", "--cells", "T:0.02:0", "hybrid_1T:0.02:0", "--scale", "0.004",
           "--device", "cpu", "--root", str(root), "--reports", str(reports)]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True)
    cells = sorted(p.name for p in root.glob("*.json"))
    assert cells == ["T_lr0.02_s0.json", "hybrid_1T_lr0.02_s0.json"]
    c = json.loads((root / cells[0]).read_text())
    assert sorted(c["test"]["k"], key=int) == [str(k) for k in S.KS] and c["test"]["n"] == 150
    assert c["test"]["k"]["16"]["prompt_tokens"] > c["test"]["k"]["1"]["prompt_tokens"] * 4
    report = json.loads((reports / "architectures.json").read_text())
    assert set(report["summary"]) == {"T", "hybrid_1T"} and (reports / "plots" / "docs_in_context.png").stat().st_size > 0
    assert "k90" in (reports / "architectures.md").read_text()
