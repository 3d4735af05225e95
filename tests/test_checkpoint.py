"""Checkpoint specs: exact round trip, every corruption caught with a clear error, no code
execution from a hostile file, keep_last, and atomicity under interrupted writes."""
import json
import os
import pickle
import random

import pytest
import torch
from torch import nn

from nanochat_core import checkpoint as ck
from nanochat_core.checkpoint import (
    CheckpointError,
    check_tokenizer,
    checkpoint_hash,
    latest_step,
    load_checkpoint,
    load_meta,
    save_checkpoint,
)
from nanochat_core.common import sha256_bytes, sha256_file

META = {"config": {"d_in": 8, "hidden": 16}, "tokenizer_hash": "ab" * 32,
        "lineage": {"parent": None, "mlflow_run_id": "r1", "data": {"corpus": "cd" * 32},
                    "git_commit": "deadbeef"},
        "stage": "pretrain", "val_loss": 1.25}


def make_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def trained(seed=0):
    """A model plus an AdamW state with real moments (one optimizer step)."""
    model = make_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 8)).pow(2).mean().backward()
    opt.step()
    return model, opt


def save_one(d, step=1, seed=0, **kw):
    model, opt = trained(seed)
    save_checkpoint(d, step, model.state_dict(), META, optim_state=opt.state_dict(), **kw)
    return model, opt


def forge_meta(d, step, **changes):
    """Rewrite a meta file with changes and a matching meta_sha256 (an attacker controls every file)."""
    path = d / f"meta_{step:06d}.json"
    meta = json.loads(path.read_text())
    meta.pop("meta_sha256")
    meta.update(changes)
    meta["meta_sha256"] = sha256_bytes(ck._canonical(meta))
    path.write_bytes(ck._canonical(meta))


# --- round trip -------------------------------------------------------------------

def test_save_load_identical_tensors_outputs_and_meta(tmp_path):
    d = tmp_path / "ckpt"
    model, opt = save_one(d, step=7)
    model_state, meta, optim_state = load_checkpoint(d, load_optim=True)
    assert model_state.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(model_state[k], v) and model_state[k].dtype == v.dtype
    fresh = make_model(seed=123)
    x = torch.randn(32, 8)
    assert not torch.equal(fresh(x), model(x))
    fresh.load_state_dict(model_state)
    assert torch.equal(fresh(x), model(x))
    # optimizer state round trips into a fresh optimizer
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    opt2.load_state_dict(optim_state)
    for s1, s2 in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])
    # meta: what the caller passed, plus the format's own fields
    for k, v in META.items():
        assert meta[k] == v
    assert meta["format_version"] == ck.FORMAT_VERSION and meta["step"] == 7
    assert meta["model_sha256"] == sha256_file(d / "model_000007.pt") == checkpoint_hash(d)
    assert meta["optim_sha256"] == sha256_file(d / "optim_000007.pt")
    assert load_checkpoint(d, load_optim=False)[2] is None
    assert load_meta(d) == meta


def test_dtypes_and_non_float_tensors_round_trip(tmp_path):
    state = {"bf16": torch.randn(3, 5).to(torch.bfloat16), "i64": torch.arange(10),
             "bool": torch.rand(4) > 0.5, "f16": torch.randn(2).half(), "empty": torch.empty(0, 3),
             "nc": torch.randn(4, 6).t()}
    save_checkpoint(tmp_path, 0, state, {})
    loaded, meta, _ = load_checkpoint(tmp_path, step=0)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    assert meta["lineage"] == {}


def test_same_weights_same_hash_different_weights_different_hash(tmp_path):
    save_one(tmp_path / "a", seed=0)
    save_one(tmp_path / "b", seed=0)
    save_one(tmp_path / "c", seed=1)
    a, b, c = (checkpoint_hash(tmp_path / n) for n in "abc")
    assert a == b != c


def test_reserved_meta_keys_are_recomputed(tmp_path):
    # a stage that copies its parent's meta must not inherit the parent's step or hashes
    model, _ = trained()
    save_checkpoint(tmp_path, 3, model.state_dict(), {**META, "step": 999, "model_sha256": "bogus",
                                                      "optim_sha256": "bogus", "meta_sha256": "x"})
    meta = load_checkpoint(tmp_path)[1]
    assert meta["step"] == 3 and meta["model_sha256"] == sha256_file(tmp_path / "model_000003.pt")
    assert meta["optim_sha256"] is None


def test_non_json_meta_is_rejected_before_writing(tmp_path):
    model, _ = trained()
    with pytest.raises(TypeError, match="JSON-serializable"):
        save_checkpoint(tmp_path / "c", 1, model.state_dict(), {"config": {"x": torch.ones(1)}})
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


def test_gpt_model_round_trip(tmp_path):
    try:
        from nanochat_core.model.gpt import GPT, GPTConfig
    except Exception as e:  # the model is another engineer's file; test it when it imports
        pytest.skip(f"nanochat_core.model.gpt not importable: {e}")
    cfg = {"vocab_size": 300, "n_layer": 2, "n_embd": 64, "n_head": 2, "n_kv_head": 1, "block_pattern": "TM",
           "sequence_len": 64}
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg))
    with torch.no_grad():  # non-trivial weights everywhere (some layers are zero-initialised)
        for p in model.parameters():
            p.normal_(0, 0.05)
    save_checkpoint(tmp_path, 10, model.state_dict(), {"config": cfg, "tokenizer_hash": "t"})
    state, meta, _ = load_checkpoint(tmp_path)
    torch.manual_seed(1)
    fresh = GPT(GPTConfig(**meta["config"]))
    idx = torch.randint(0, 300, (2, 24))
    model.eval()
    fresh.eval()
    with torch.no_grad():
        ref = model(idx)
        assert not torch.equal(fresh(idx), ref)
        fresh.load_state_dict(state)
        assert torch.equal(fresh(idx), ref)


# --- corruption -------------------------------------------------------------------

def cut_points(n, seed):
    rng = random.Random(seed)
    return sorted({0, 1, n // 2, n - 1, *rng.sample(range(1, n - 1), 6)})


@pytest.mark.parametrize("kind", ["model", "optim", "meta"])
def test_truncation_anywhere_gives_checkpoint_error(tmp_path, kind):
    save_one(tmp_path, step=5)
    path = tmp_path / f"{kind}_000005.{'json' if kind == 'meta' else 'pt'}"
    data = path.read_bytes()
    for cut in cut_points(len(data), seed=len(kind)):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path, load_optim=True)
        msg = str(e.value)
        assert str(path) in msg and "dvc checkout" in msg and "rerun" in msg, (cut, msg)
        assert ("corrupt" in msg or "truncated" in msg), msg
    path.write_bytes(data)
    load_checkpoint(tmp_path, load_optim=True)  # restored: loads again


@pytest.mark.parametrize("kind", ["model", "optim", "meta"])
def test_flipped_byte_gives_checkpoint_error(tmp_path, kind):
    save_one(tmp_path, step=5)
    path = tmp_path / f"{kind}_000005.{'json' if kind == 'meta' else 'pt'}"
    data = bytearray(path.read_bytes())
    for pos in [len(data) // 3, len(data) // 2, len(data) - 30]:
        bad = bytearray(data)
        bad[pos] = ord("7") if bad[pos] != ord("7") else ord("8")  # stays valid JSON text where it can
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match="corrupt|modified") as e:
            load_checkpoint(tmp_path, load_optim=True)
        assert str(path) in str(e.value)


def test_missing_files_and_dirs(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "empty")
    assert latest_step(tmp_path / "nowhere") is None and latest_step(tmp_path / "empty") is None

    d = tmp_path / "c"
    save_one(d, step=2)
    with pytest.raises(CheckpointError, match="meta_000009.json does not exist"):
        load_checkpoint(d, step=9)
    (d / "optim_000002.pt").unlink()
    load_checkpoint(d)  # optimizer state not requested: fine
    with pytest.raises(CheckpointError, match="optim_000002.pt is missing"):
        load_checkpoint(d, load_optim=True)
    (d / "model_000002.pt").unlink()
    with pytest.raises(CheckpointError, match="model_000002.pt is missing.*dvc checkout"):
        load_checkpoint(d)


def test_load_optim_when_none_was_saved(tmp_path):
    model, _ = trained()
    save_checkpoint(tmp_path, 1, model.state_dict(), META)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(tmp_path, load_optim=True)


def test_meta_edit_without_checksum_is_detected(tmp_path):
    save_one(tmp_path, step=1)
    path = tmp_path / "meta_000001.json"
    meta = json.loads(path.read_text())
    meta["config"]["hidden"] = 32
    path.write_text(json.dumps(meta, indent=1, sort_keys=True))
    with pytest.raises(CheckpointError, match="meta_000001.json was modified or corrupted"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError):
        checkpoint_hash(tmp_path)


# --- hostile files ------------------------------------------------------------------

class WritesMarker:
    """Unpickling this calls exec(), which writes a marker file: stands in for os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_payload_really_executes_when_loaded_unsafely(tmp_path):
    # control: proves the payload below is live, so the refusal tests can fail
    marker = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(WritesMarker(marker)))
    assert marker.exists()


def test_pickle_with_code_is_refused_even_with_correct_sha(tmp_path):
    marker = tmp_path / "marker"
    model, _ = trained()
    # save_checkpoint itself records the correct sha256: only weights_only stands in the way
    state = {**model.state_dict(), "evil": WritesMarker(marker)}
    save_checkpoint(tmp_path / "a", 1, state, META)
    assert load_meta(tmp_path / "a")["model_sha256"] == sha256_file(tmp_path / "a" / "model_000001.pt")
    with pytest.raises(CheckpointError, match="model_000001.pt was refused.*weights_only") as e:
        load_checkpoint(tmp_path / "a")
    assert "exec" in str(e.value)
    assert not marker.exists()

    # same through the optimizer file
    save_checkpoint(tmp_path / "b", 1, model.state_dict(), META, optim_state={"x": WritesMarker(marker)})
    load_checkpoint(tmp_path / "b")  # the weights alone are fine
    with pytest.raises(CheckpointError, match="optim_000001.pt was refused"):
        load_checkpoint(tmp_path / "b", load_optim=True)
    assert not marker.exists()


def test_raw_pickle_file_with_forged_meta_is_refused(tmp_path):
    marker = tmp_path / "marker"
    save_one(tmp_path, step=1)
    payload = pickle.dumps({"weight": WritesMarker(marker)}, protocol=2)
    (tmp_path / "model_000001.pt").write_bytes(payload)
    forge_meta(tmp_path, 1, model_sha256=sha256_bytes(payload))
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_non_dict_model_file_is_refused(tmp_path):
    save_one(tmp_path, step=1)
    path = tmp_path / "model_000001.pt"
    torch.save([torch.ones(2)], path)
    forge_meta(tmp_path, 1, model_sha256=sha256_file(path))
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(tmp_path)


# --- retention, incomplete and interrupted writes -------------------------------

def files(d):
    return sorted(p.name for p in d.iterdir())


def test_keep_last(tmp_path):
    for step in range(1, 6):
        save_one(tmp_path / "k2", step=step, seed=step)
        save_one(tmp_path / "k3", step=step, seed=step, keep_last=3)
        save_one(tmp_path / "all", step=step, seed=step, keep_last=None)
    assert files(tmp_path / "k2") == ["meta_000004.json", "meta_000005.json", "model_000004.pt",
                                      "model_000005.pt", "optim_000004.pt", "optim_000005.pt"]
    assert [n for n in files(tmp_path / "k3") if n.startswith("meta")] == \
        ["meta_000003.json", "meta_000004.json", "meta_000005.json"]
    assert len(files(tmp_path / "all")) == 15
    assert latest_step(tmp_path / "k2") == 5
    # the kept older step still loads
    load_checkpoint(tmp_path / "k2", step=4, load_optim=True)


def test_incomplete_write_is_ignored(tmp_path):
    model, _ = save_one(tmp_path, step=1, seed=1)
    # a crash after the weights of step 2 landed but before its meta: no meta_000002.json
    torch.save(make_model(2).state_dict(), tmp_path / "model_000002.pt")
    (tmp_path / "optim_000002.pt").write_bytes(b"partial")
    assert latest_step(tmp_path) == 1
    state, meta, _ = load_checkpoint(tmp_path)
    assert meta["step"] == 1 and torch.equal(state["0.weight"], model.state_dict()["0.weight"])
    with pytest.raises(CheckpointError, match="never completely written"):
        load_checkpoint(tmp_path, step=2)
    # the next completed save clears the debris of the interrupted one
    save_one(tmp_path, step=3, seed=3)
    assert not (tmp_path / "model_000002.pt").exists() and not (tmp_path / "optim_000002.pt").exists()


@pytest.mark.parametrize("fail_at", [1, 2, 3])  # the os.replace of model, optim, meta
def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch, fail_at):
    model1, _ = save_one(tmp_path, step=1, seed=1)
    before = {n: (tmp_path / n).read_bytes() for n in files(tmp_path)}
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == fail_at:
            raise OSError("simulated crash during rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save_one(tmp_path, step=2, seed=2)
    monkeypatch.undo()
    assert len(calls) == fail_at
    assert not [n for n in files(tmp_path) if n.endswith(".tmp")]
    assert latest_step(tmp_path) == 1
    for n, data in before.items():
        assert (tmp_path / n).read_bytes() == data
    state, meta, _ = load_checkpoint(tmp_path, load_optim=True)
    assert meta["step"] == 1 and torch.equal(state["2.weight"], model1.state_dict()["2.weight"])


def test_failed_overwrite_of_same_step_keeps_it(tmp_path, monkeypatch):
    model1, _ = save_one(tmp_path, step=4, seed=1)
    real_save = torch.save

    def dies_mid_write(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")  # some bytes land in the temp file, then the process "dies"
        raise RuntimeError("simulated failure while writing")

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(RuntimeError, match="simulated"):
        save_one(tmp_path, step=4, seed=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert not [n for n in files(tmp_path) if n.endswith(".tmp")]
    state, _, _ = load_checkpoint(tmp_path, load_optim=True)
    assert torch.equal(state["0.weight"], model1.state_dict()["0.weight"])


def test_overwrite_same_step(tmp_path):
    save_one(tmp_path, step=4, seed=1)
    model2, _ = trained(seed=2)
    save_checkpoint(tmp_path, 4, model2.state_dict(), META)  # no optimizer this time
    state, meta, _ = load_checkpoint(tmp_path)
    assert torch.equal(state["0.weight"], model2.state_dict()["0.weight"])
    assert not (tmp_path / "optim_000004.pt").exists() and meta["optim_sha256"] is None


# --- tokenizer match --------------------------------------------------------------

class FakeTokenizer:
    def __init__(self, h):
        self.hash = h


def test_check_tokenizer(tmp_path):
    save_one(tmp_path, step=1)
    meta = load_meta(tmp_path)
    check_tokenizer(meta, FakeTokenizer(META["tokenizer_hash"]))
    check_tokenizer(meta, META["tokenizer_hash"])
    with pytest.raises(CheckpointError, match="trained with tokenizer abababababab.*123456789012"):
        check_tokenizer(meta, FakeTokenizer("1234567890" * 6))
    with pytest.raises(CheckpointError, match="no tokenizer_hash"):
        check_tokenizer({"step": 1}, FakeTokenizer("x"))


def test_check_tokenizer_with_real_tokenizer(tmp_path):
    from nanochat_core.tokenizer import Tokenizer
    texts = ["the cat sat on the mat. " * 20, "a dog ran in the park. " * 20]
    tok_a, tok_b = Tokenizer.train(texts, 280), Tokenizer.train(texts, 290)
    model, _ = trained()
    save_checkpoint(tmp_path, 1, model.state_dict(), {"tokenizer_hash": tok_a.hash})
    meta = load_meta(tmp_path)
    check_tokenizer(meta, tok_a)
    with pytest.raises(CheckpointError, match="tokenizer"):
        check_tokenizer(meta, tok_b)
