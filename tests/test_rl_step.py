"""benchmarks.rl_step's command line: a missing warm-up names the path and the command that makes
it, and an impossible --steps is refused (the gradient parity it reports: tests/test_rl.py)."""

import pytest

from benchmarks import rl_step


def test_missing_checkpoint_names_the_path_and_the_command(bare_clone):
    with pytest.raises(SystemExit, match=r"refrag_sft does not exist; run `dvc repro refrag_finetune`"):
        rl_step.main(["--root", str(bare_clone), "--out", str(bare_clone / "r.json")])
    assert not (bare_clone / "r.json").exists()


def test_zero_steps_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        rl_step.main(["--steps", "0"])
    assert e.value.code == 2 and "--steps must be >= 1" in capsys.readouterr().err
