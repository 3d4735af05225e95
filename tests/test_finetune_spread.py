"""benchmarks.finetune_spread: which params each retraining gets, how a setting's spread is summed
up, and bad arguments refused with what to do (the training itself: the pipeline's stages)."""

import pytest

from benchmarks import finetune_spread as fs
from nanochat_core.common import REPO_ROOT
from nanochat_core.params import load_params


def test_scaled_changes_only_the_retrained_stages_and_leaves_the_params_alone():
    params = load_params(REPO_ROOT / "params.yaml")
    before = {s: dict(params[s]) for s in ("midtrain", "rag_finetune", "refrag_finetune")}
    p = fs.scaled(params, ["rag_finetune", "refrag_finetune"], 0.25, 100)
    for s in ("rag_finetune", "refrag_finetune"):
        assert p[s]["seed"] == before[s]["seed"] + 100
        for k in fs.LRS:
            assert p[s][k] == pytest.approx(before[s][k] * 0.25)
    assert p["midtrain"] == before["midtrain"]  # not retrained: untouched
    assert p["refrag_finetune"]["rl_steps"] == 0  # the warm-up only
    assert {s: params[s] for s in before} == before  # the caller's params are not modified


def test_summary_is_mean_and_range_over_seeds():
    runs = [{"2hop": (50, 0.2), "single": (50, 0.4)}, {"2hop": (50, 0.3), "single": (50, 0.44)},
            {"2hop": (50, 0.25), "single": (50, 0.36)}]
    s = fs.summarize(runs)
    assert s["2hop"] == {"n": 50, "mean": pytest.approx(0.25), "min": 0.2, "max": 0.3}
    assert s["single"]["mean"] == pytest.approx(0.4) and (s["single"]["min"], s["single"]["max"]) == (0.36, 0.44)


@pytest.mark.parametrize("args, says", [
    (["--first", "refrag_finetune", "--last", "midtrain"], "comes after --last"),
    (["--first", "midtrain", "--last", "midtrain"], "midtrain alone has no val EM"),
    (["--lr-scales", "0"], "must be > 0"),
    (["--set", "rag_finetune.no_such_key=1"], "expected STAGE.KEY=VALUE with a key of params.yaml"),
    (["--set", "rag_finetune.steps=-5"], "rag_finetune.steps"),
])
def test_bad_arguments_are_refused(args, says, capsys):
    with pytest.raises(SystemExit) as e:
        fs.main(args + ["--out", "/nonexistent/never.json"])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_missing_parent_checkpoint_names_the_path_and_the_command(bare_clone):
    with pytest.raises(SystemExit, match=r"checkpoints/mid does not exist; run `dvc repro midtrain`"):
        fs.main(["--root", str(bare_clone), "--out", str(bare_clone / "r.json")])
    assert not (bare_clone / "r.json").exists()
