"""A pretrain process killed with SIGKILL after its first checkpoint resumes from a
checkpoint when rerun (not from step 0) and reaches the uninterrupted run's final loss."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from nanochat_core import stages
from nanochat_core.checkpoint import latest_step, load_checkpoint
from nanochat_core.common import REPO_ROOT

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
