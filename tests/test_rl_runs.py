"""benchmarks.rl_runs: the paired RL-minus-warm-up arithmetic, and its command line's refusals (that
its test EM is evaluate's, and its RL the pipeline's: tests/test_flows.py's pipeline test)."""

import pytest

from benchmarks import rl_runs


def test_paired_difference_counts_gains_and_losses_on_the_same_questions():
    warm = [1, 1, 0, 0, 1, 0, 1, 0]
    rl = [1, 0, 1, 1, 1, 0, 1, 1]  # gains questions 2, 3, 7; loses question 1
    d = rl_runs.paired(warm, rl)
    assert (d["n"], d["gained"], d["lost"]) == (8, 3, 1)
    assert d["diff"] == pytest.approx(2 / 8) == pytest.approx(sum(rl) / 8 - sum(warm) / 8)
    # the sample sd of the per-question differences [0,-1,1,1,0,0,0,1] is sqrt(0.5), so 1.96 x sqrt(0.5/8)
    assert d["hi"] - d["diff"] == pytest.approx(d["diff"] - d["lo"]) == pytest.approx(1.96 * 0.25)
    same = rl_runs.paired(warm, warm)
    assert (same["diff"], same["lo"], same["hi"], same["gained"], same["lost"]) == (0, 0, 0, 0, 0)


def test_by_hop1_splits_multi_hop_ems_by_the_shown_ids_and_keeps_each_em_with_its_question():
    groups = {"2hop": [{"id": "a"}, {"id": "b"}, {"id": "c"}], "3hop": [{"id": "d"}], "single": [{"id": "e"}]}
    ems = {"2hop": [1, 0, 1], "3hop": [0], "single": [1]}
    got = rl_runs.by_hop1(ems, groups, {"b", "c", "e"})
    assert got == {"2hop answer in hop 1": [0, 1], "2hop answer not in hop 1": [1], "3hop answer not in hop 1": [0]}


def test_paired_refuses_lists_of_different_questions():
    with pytest.raises(ValueError, match="equally long, non-empty EM lists; got 3 and 2"):
        rl_runs.paired([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="got 0 and 0"):
        rl_runs.paired([], [])


def test_missing_warm_up_names_the_path_and_the_command(bare_clone):
    with pytest.raises(SystemExit, match=r"refrag_sft does not exist; run `dvc repro refrag_finetune`"):
        rl_runs.main(["--root", str(bare_clone), "--out", str(bare_clone / "r.json")])
    assert not (bare_clone / "r.json").exists()


@pytest.mark.parametrize("kv, says", [
    ("refrag_finetune.steps=10", "expected refrag_finetune.rl_KEY=VALUE"),  # the warm-up is not retrained
    ("evaluate.k=5", "expected refrag_finetune.rl_KEY=VALUE"),
    ("refrag_finetune.rl_sedd=3", "expected refrag_finetune.rl_KEY=VALUE"),
    ("refrag_finetune.rl_group_size=1", "refrag_finetune.rl_group_size"),  # params validation names the key
])
def test_bad_overrides_are_refused_with_the_key(kv, says, capsys):
    with pytest.raises(SystemExit) as e:
        rl_runs.main(["--set", kv])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_rl_seed_goes_through_seeds_not_set(capsys):
    with pytest.raises(SystemExit) as e:
        rl_runs.main(["--set", "refrag_finetune.rl_seed=3"])
    assert e.value.code == 2 and "give RL's seeds with --seeds" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--seeds", "45"], ["--set", "refrag_finetune.rl_steps=5"]])
def test_warm_up_only_refuses_rl_arguments(extra, capsys):
    with pytest.raises(SystemExit) as e:
        rl_runs.main(["--warm-up-only", *extra])
    assert e.value.code == 2 and "--warm-up-only runs no RL: leave out --seeds and --set" in capsys.readouterr().err


def test_a_warm_up_from_other_params_or_code_is_refused(bare_clone):
    """RL's questions and rates come from params.yaml, so a warm-up trained under another
    refrag_finetune section (here: another seed) would not be the one those params describe."""
    import torch

    from nanochat_core import stages
    from nanochat_core.checkpoint import checkpoint_hash, save_checkpoint
    from nanochat_core.params import load_params
    for d in ("data/kb", "checkpoints/tokenizer"):
        (bare_clone / d).mkdir(parents=True)
    for f in ("data/qa/train.jsonl", "data/qa/val.jsonl", "data/qa/test.jsonl", "checkpoints/tokenizer/tokenizer.json"):
        (bare_clone / f).parent.mkdir(parents=True, exist_ok=True)
        (bare_clone / f).write_text("")
    state = {"w": torch.zeros(2)}
    save_checkpoint(bare_clone / "checkpoints/rag", 1, state, {"config": {}, "tokenizer_hash": "t", "lineage": {}})
    params = load_params(bare_clone / "params.yaml")
    other = load_params(bare_clone / "params.yaml")
    other["refrag_finetune"]["seed"] += 1
    parent = checkpoint_hash(bare_clone / "checkpoints/rag")
    code = stages.stage_code_hash("refrag_finetune", bare_clone)
    # another refrag_finetune section, or the same one run by other code
    for key in (stages.resume_key(other, ["refrag_finetune"], parent, code),
                stages.resume_key(params, ["refrag_finetune"], parent, "other code")):
        save_checkpoint(bare_clone / "checkpoints/refrag_sft", 700, state,
                        {"config": {}, "tokenizer_hash": "t", "lineage": {}, "resume_key": key})
        with pytest.raises(SystemExit, match=r"refrag_sft was not trained with .*params.yaml's refrag_finetune "
                                              r"section, from .*rag and by .*'s code"):
            rl_runs.main(["--root", str(bare_clone), "--out", str(bare_clone / "r.json")])
    # the key the stage itself writes gets past the check (and on to the empty stand-in files)
    key = stages.resume_key(params, ["refrag_finetune"], parent, stages.stage_code_hash("refrag_finetune", bare_clone))
    save_checkpoint(bare_clone / "checkpoints/refrag_sft", 700, state,
                    {"config": {}, "tokenizer_hash": "t", "lineage": {}, "resume_key": key})
    with pytest.raises(Exception) as err:
        rl_runs.main(["--root", str(bare_clone), "--out", str(bare_clone / "r.json")])
    assert "was not trained" not in str(err.value)
