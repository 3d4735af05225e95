"""The d20 presets are real models (slow: ~10 GB of RAM, a minute or two): each one builds, has
the size it claims, and takes 2 optimizer steps on the CPU at batch 1 that change every
parameter. benchmarks/presets.py reports the same figures for the README."""
import math

import pytest

from benchmarks.presets import build, counts, two_steps
from nanochat_core.presets import list_presets

D20 = [n for n in list_presets() if n.endswith("_d20")]


def test_the_d20_presets_are_the_seeds_configurations():
    assert {"transformer_d20", "mamba_d20", "hybrid_8T12M_d20", "rag_hybrid_d20", "refrag_hybrid_d20"} <= set(D20)


@pytest.mark.slow
@pytest.mark.parametrize("name", D20)
def test_d20_preset_builds_and_steps_on_cpu(name):
    model, params = build(name)
    c = counts(model)
    assert params["model"]["n_layer"] == 20 and params["model"]["n_embd"] == 1280
    if name == "transformer_d20":  # nanochat's d20: ~561M parameters
        assert abs(c["params"] - 561e6) / 561e6 < 0.03, c
    out = two_steps(model)
    assert all(math.isfinite(x) for x in out["losses"]), out
    assert out["moved"] == out["n_tensors"], out  # every parameter tensor was updated
