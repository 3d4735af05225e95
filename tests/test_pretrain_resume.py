"""A pretrain process killed with SIGKILL after its first checkpoint resumes from a
checkpoint when rerun (not from step 0) and reaches the uninterrupted run's final loss."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nanochat_core import dvcfile, stages
from nanochat_core.checkpoint import checkpoint_hash, latest_step, load_checkpoint
from nanochat_core.common import REPO_ROOT, hash_path

TRAIN = dict(seed=0, steps=40, batch_size=4, grad_accum=1, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004,
             scalar_lr=0.004, weight_decay=0.0, warmup_frac=0.0, warmdown_frac=0.2, eval_every=0, eval_tokens=512,
             checkpoint_every=5, keep_last=2, log_every=5, device="cpu", precision="fp32", compile=False)
PARAMS = {"tokenizer": {"vocab_size": 300, "max_chars": 200_000},
          "model": dict(sequence_len=32, vocab_size=300, n_layer=2, n_embd=32, n_head=2, n_kv_head=2,
                        block_pattern="TM", headdim=16, d_state=8),
          "pretrain": TRAIN}

CHILD = """
import json, sys
from nanochat_core import stages
params = json.loads(sys.argv[1])
stages.pretrain(params, "corpus", "base", "tokenizer")
"""


def make_corpus(root):
    text = ("Pares Bunugal was born in Kudedar. Kudedar is located in Hefunia. Gita Motors was founded by Kane Duto. "
            "The quick brown fox jumps over the lazy dog while the cat sleeps. ") * 40
    (root / "corpus").mkdir(parents=True)
    rows = [{"text": text[i:i + 400], "source": "test"} for i in range(0, len(text), 400)]
    (root / "corpus" / "shard_00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_sigkilled_pretrain_resumes_and_matches(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    make_corpus(a)
    make_corpus(b)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(PARAMS)], cwd=b, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not list((b / "base").glob("meta_*.json")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest_step(b / "base")
    assert killed_at is not None and killed_at < TRAIN["steps"], "the run finished before it could be killed"

    monkeypatch.chdir(b)
    resumed = stages.pretrain(PARAMS, "corpus", "base", "tokenizer")
    assert resumed["resumed_from"] == killed_at

    monkeypatch.chdir(a)
    full = stages.pretrain(PARAMS, "corpus", "base", "tokenizer")
    assert full["resumed_from"] is None
    assert abs(resumed["final_loss"] - full["final_loss"]) / full["final_loss"] <= 1e-3
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in full["history"]]  # the whole run
    wa, _, _ = load_checkpoint(a / "base")
    wb, _, _ = load_checkpoint(b / "base")
    for name in wa:
        assert torch.allclose(wa[name], wb[name], rtol=1e-3, atol=1e-5), name


def test_stage_code_hash_follows_the_python_deps_in_dvc_yaml(tmp_path):
    """The hash changes with the source of a listed .py file or a .py in a listed folder, and
    with nothing else: bytecode caches, data files in a listed folder, unlisted files, or a
    skipped file (the RL phase's modules, for the REFRAG warm-up)."""
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: x\n    deps:\n      - pkg\n      - one.py\n"
                                       "      - rl.py\n      - data\n")
    for f, text in {"pkg/a.py": "A = 1\n", "pkg/sub/b.py": "B = 1\n", "one.py": "C = 1\n", "rl.py": "R = 1\n",
                    "data/x.jsonl": "{}\n", "other.py": "D = 1\n", "pkg/__pycache__/a.cpython-312.pyc": "x"}.items():
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text(text)

    def h():
        return stages.stage_code_hash("s", tmp_path, skip=("rl.py",))
    (tmp_path / "pkg" / ".#lock.py").symlink_to(tmp_path / "nowhere")  # an editor's dangling lock link
    base = h()
    for f in ("pkg/__pycache__/a.cpython-312.pyc", "data/x.jsonl", "other.py", "rl.py"):
        (tmp_path / f).write_text("changed")
        assert h() == base, f
    for f in ("pkg/sub/b.py", "one.py"):
        before = h()
        (tmp_path / f).write_text("changed = 2\n")
        assert h() != before, f
    assert stages.stage_code_hash("s", tmp_path, skip=()) != h()  # rl.py counts when not skipped
    # the REFRAG warm-up's hash leaves out exactly the RL phase's modules, which are its deps
    deps = set(dvcfile.deps("refrag_finetune", dvcfile.load(REPO_ROOT / "dvc.yaml")))
    assert set(stages.RL_PHASE_CODE) <= deps
    with pytest.raises(ValueError, match="unknown stage 'pretrian'"):
        stages.stage_code_hash("pretrian")


def test_a_finished_stage_rerun_by_other_code_trains_again(tmp_path, monkeypatch):
    """Checkpoint dirs persist, so when DVC reruns a stage after a code change, the finished
    step checkpoint must not be taken as a resume point: other code starts from step 0; the
    same code finds the run complete and trains nothing. Pretrain, then a fine-tune from it."""
    mid = {**TRAIN, "steps": 3, "checkpoint_every": 3, "max_len": 32, "eval_tokens": 0}
    params = {**PARAMS, "pretrain": {**TRAIN, "steps": 4, "checkpoint_every": 2}, "midtrain": mid}
    convs = [[{"role": "user", "content": f"Where was Ada {i} born?"}, {"role": "assistant", "content": "Kudedar"}]
             for i in range(12)]
    make_corpus(tmp_path)
    monkeypatch.chdir(tmp_path)

    def both():
        return (stages.pretrain(params, "corpus", "base", "tokenizer"),
                stages.finetune("midtrain", params, convs, "base", "mid", "tokenizer/tokenizer.json"))
    assert [s["resumed_from"] for s in both()] == [None, None]
    assert [s["resumed_from"] for s in both()] == [4, 3]  # same code: complete, nothing trained
    real = stages.stage_code_hash
    monkeypatch.setattr(stages, "stage_code_hash", lambda stage, *a, **k: "edited " + real(stage, *a, **k))
    assert [s["resumed_from"] for s in both()] == [None, None]
    _, meta, _ = load_checkpoint(tmp_path / "base", 4)
    assert meta["resume_key"] == stages.resume_key(params, ["tokenizer", "model", "pretrain"],
                                                   hash_path(tmp_path / "corpus"), "edited " + real("pretrain"))
    _, meta, _ = load_checkpoint(tmp_path / "mid", 3)
    assert meta["resume_key"] == stages.stage_resume_key(params, "midtrain", checkpoint_hash(tmp_path / "base"))
