"""benchmarks.rl_headroom's command line: a missing warm-up names the path and the command that
makes it; impossible arguments are refused (the counting itself: tests/test_rl.py)."""

import pytest

from benchmarks import rl_headroom


def test_missing_checkpoint_names_the_path_and_the_command(bare_clone):
    with pytest.raises(SystemExit, match=r"refrag_sft does not exist; run `dvc repro refrag_finetune`"):
        rl_headroom.main(["--root", str(bare_clone), "--out", str(bare_clone / "r.json")])
    assert not (bare_clone / "r.json").exists()


@pytest.mark.parametrize("args", [["--group", "0"], ["--temperatures", "0"]])
def test_bad_arguments_are_refused(args, capsys):
    with pytest.raises(SystemExit) as e:
        rl_headroom.main(args)
    assert e.value.code == 2 and "--group must be >= 1" in capsys.readouterr().err

