"""The training loop: resume from a checkpoint equals an uninterrupted run; batches are a
pure function of the step; the schedule and the conversation batches are what they claim."""
import pytest
import torch

from nanochat_core.checkpoint import latest_step
from nanochat_core.model import GPT, GPTConfig
from nanochat_core.train import ConversationBatches, TokenStream, lr_multiplier, train

CFG = GPTConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_kv_head=1, block_pattern="TM", headdim=16,
                d_state=8, sequence_len=16)
TRAIN = {"steps": 8, "batch_size": 4, "grad_accum": 2, "checkpoint_every": 3, "log_every": 100, "warmup_frac": 0.25,
         "warmdown_frac": 0.25, "seed": 5, "keep_last": 5, "matrix_lr": 0.02, "embedding_lr": 0.2,
         "unembedding_lr": 0.004, "scalar_lr": 0.004, "weight_decay": 0.0, "eval_every": 0, "precision": "fp32",
         "compile": False}


def fresh_model():
    torch.manual_seed(0)
    return GPT(CFG)


def stream():
    g = torch.Generator().manual_seed(0)
    return TokenStream(torch.randint(0, 64, (2000,), generator=g), CFG.sequence_len)


class Crash(Exception):
    pass


def test_resumed_run_matches_uninterrupted(tmp_path):
    meta = {"config": CFG.to_dict()}
    ref_model = fresh_model()
    ref = train(ref_model, stream(), TRAIN, tmp_path / "a", meta)

    data = stream()

    def crashing(seed, step, micro, bs):
        if step == 4:  # after the step-3 checkpoint, mid-way through step 5
            raise Crash()
        return data(seed, step, micro, bs)

    with pytest.raises(Crash):
        train(fresh_model(), crashing, TRAIN, tmp_path / "b", meta)
    assert latest_step(tmp_path / "b") == 3
    model = fresh_model()
    out = train(model, stream(), TRAIN, tmp_path / "b", meta)
    assert out["resumed_from"] == 3
    assert abs(out["final_loss"] - ref["final_loss"]) / ref["final_loss"] <= 1e-3
    for (n, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), n
    # The loss history rides in the checkpoint: the resumed run reports (and plots) all 8 steps.
    assert [h["step"] for h in out["history"]] == list(range(1, 9))
    for h, r in zip(out["history"], ref["history"]):
        assert abs(h["loss"] - r["loss"]) <= 1e-3 * r["loss"], h["step"]


def test_a_complete_run_reports_its_real_history(tmp_path):
    meta = {"config": CFG.to_dict()}
    ref = train(fresh_model(), stream(), TRAIN, tmp_path, meta)
    again = train(fresh_model(), stream(), TRAIN, tmp_path, meta)  # nothing left to train
    assert again["resumed_from"] == TRAIN["steps"]
    assert again["final_loss"] == ref["final_loss"] and again["history"] == ref["history"]


def test_a_missing_training_key_is_an_error_not_a_hidden_default(tmp_path):
    cfg = {k: v for k, v in TRAIN.items() if k != "matrix_lr"}
    with pytest.raises(KeyError, match="matrix_lr"):
        train(fresh_model(), stream(), cfg, tmp_path, {"config": CFG.to_dict()})


def test_other_params_start_over_instead_of_resuming(tmp_path):
    # Under DVC, a rerun after a params change must retrain, not resume the old run's steps.
    meta = {"config": CFG.to_dict(), "resume_key": "params-A"}
    train(fresh_model(), stream(), {**TRAIN, "steps": 6}, tmp_path, meta)
    assert latest_step(tmp_path) == 6
    ref = train(fresh_model(), stream(), {**TRAIN, "steps": 4, "seed": 9}, tmp_path / "ref", {**meta, "resume_key": "B"})
    out = train(fresh_model(), stream(), {**TRAIN, "steps": 4, "seed": 9}, tmp_path, {**meta, "resume_key": "B"})
    assert out["resumed_from"] is None
    assert latest_step(tmp_path) == 4  # the old run's step 6 is gone, not picked up later
    assert out["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-4)


def test_batches_are_a_function_of_the_step():
    s = stream()
    a = s(1, 7, 0, 3)
    b = s(1, 7, 0, 3)
    c = s(1, 8, 0, 3)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert torch.equal(a[0][:, 1:], a[1][:, :-1])  # targets are the inputs shifted by one


def test_lr_schedule():
    assert lr_multiplier(0, 100, 0.1, 0.2) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, 0.1, 0.2) == pytest.approx(1.0)
    assert lr_multiplier(50, 100, 0.1, 0.2) == 1.0
    assert lr_multiplier(99, 100, 0.1, 0.2) == pytest.approx(0.05 + 0.95 * 0.1)


def test_conversation_batches_mask_only_assistant_tokens():
    ids = [1, 2, 3, 4, 5, 6]
    mask = [0, 0, 0, 1, 1, 0]
    x, y, w = ConversationBatches([(ids, mask)], max_len=10)(0, 0, 0, 2)
    assert x[0].tolist() == [1, 2, 3, 4, 5]
    # target at position t is ids[t+1], kept only where mask[t+1] == 1
    assert y[0].tolist() == [-1, -1, 4, 5, -1]
    assert w is None  # a 0/1 mask: every target weighs 1, the loss is the plain mean


def test_weighted_targets_train_the_weighted_mean():
    """A fractional mask (a documents block with a loss_weight) keeps those targets at that
    weight: the loss is sum(w * CE) / sum(w), the held-out loss too, and all-1 weights give
    exactly the plain mean."""
    import torch.nn.functional as F

    from nanochat_core.train import evaluate_loss
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=50, n_layer=2, n_embd=32, n_head=2, n_kv_head=2,
                          block_pattern="TM", headdim=16, chunk_size=8))
    rows = [([1, 7, 8, 9, 3, 4, 2], [0, 0.25, 0.25, 0.25, 1, 1, 0]), ([5, 6, 7, 8], [0, 0, 1, 1])]
    batches = ConversationBatches(rows, max_len=10)
    x, y, w = batches._batch([0, 1])
    assert y[0].tolist() == [7, 8, 9, 3, 4, -1] and y[1].tolist() == [-1, 7, 8, -1, -1, -1]
    assert w[0].tolist() == [0.25, 0.25, 0.25, 1, 1, 0] and w[1].tolist() == [0, 1, 1, 0, 0, 0]
    with torch.no_grad():
        ce = F.cross_entropy(model(x).reshape(-1, 50), y.reshape(-1).clamp(min=0), reduction="none").view_as(w)
        expect = (ce * w).sum() / w.sum()
        assert torch.allclose(model(x, y, weights=w), expect, rtol=1e-5)
        assert torch.allclose(evaluate_loss(model, batches, 2) * torch.ones(()), expect, rtol=1e-5)
        keep = (y != -1).float()
        assert torch.allclose(model(x, y, weights=keep), model(x, y), rtol=1e-6)
        answers = (w == 1).float()  # weight 0 on the documents: the answers' own mean
        assert torch.allclose(model(x, y, weights=answers), ce[w == 1].mean(), rtol=1e-5)
        for reduction in ("none", "sum"):  # weights that would be ignored are refused, by name
            with pytest.raises(ValueError, match=f"weights apply to the mean loss only, not reduction='{reduction}'"):
                model(x, y, reduction=reduction, weights=w)


def test_conversation_batches_pad_little_and_draw_every_row_equally():
    # Half short drills, half long conversations, interleaved: random batches would pad
    # nearly every row to the long length (1.8x the real tokens); length-ordered runs only
    # mix lengths where the order wraps from short to long.
    rows = [([i + 1] * (6 if i % 2 else 51), [1] * (6 if i % 2 else 51)) for i in range(100)]
    batches = ConversationBatches(rows, max_len=100, pad_id=0)
    counts, padded, real = [0] * 100, 0, 0
    for step in range(2000):
        x, y, _ = batches(3, step, 0, 8)
        padded += x.numel()
        real += int((y != -1).sum())
        for row in x[:, 0].tolist():
            counts[row - 1] += 1
    assert padded / real < 1.3
    assert max(counts) / min(counts) < 1.6  # ~160 draws each: uniform up to sampling noise
    # the same (seed, step) gives the same batch: a resumed run replays the same data
    assert torch.equal(batches(3, 7, 0, 8)[0], batches(3, 7, 0, 8)[0])


def test_too_short_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one sequence"):
        TokenStream(torch.arange(10), 16)


def test_bf16_autocast_keeps_the_ssm_scan_in_fp32_and_tracks_fp32(monkeypatch):
    """precision bf16 (here on the CPU; auto picks it on CUDA): the matmuls run in bf16, the
    Mamba-2 scan gets fp32 inputs, the weights stay fp32, and the loss is fp32's to ~1%."""
    from nanochat_core.model import mamba
    seen = []
    real = mamba.ssd_scan

    def spy(x, dt, A, B, C, *a, **k):
        seen.append({t.dtype for t in (x, dt, A, B, C)})
        return real(x, dt, A, B, C, *a, **k)
    monkeypatch.setattr(mamba, "ssd_scan", spy)
    x, y, _ = stream()(0, 0, 0, 4)
    model = fresh_model()
    ref = model(x, y).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.transformer.wte(x)
        assert model.lm_head(h).dtype == torch.bfloat16  # autocast really is on for the matmuls
        loss = model(x, y)
    assert seen and all(s == {torch.float32} for s in seen)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert abs(loss.item() - ref) / ref < 0.01


def test_train_in_bf16_follows_fp32(tmp_path):
    runs = {}
    for prec in ("fp32", "bf16"):
        cfg = {**TRAIN, "steps": 4, "grad_accum": 1, "precision": prec}
        runs[prec] = [h["loss"] for h in train(fresh_model(), stream(), cfg, tmp_path / prec, {"config": CFG.to_dict()})["history"]]
    assert runs["fp32"] != runs["bf16"]  # bf16 really ran
    assert all(abs(a - b) / b < 0.02 for a, b in zip(runs["bf16"], runs["fp32"])), runs


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """compile: true (fixed shapes) takes the same steps as eager mode, to float tolerance."""
    runs = {}
    for comp in (False, True):
        cfg = {**TRAIN, "steps": 3, "grad_accum": 1, "compile": comp}
        runs[comp] = [h["loss"] for h in train(fresh_model(), stream(), cfg, tmp_path / str(comp), {"config": CFG.to_dict()})["history"]]
    assert all(abs(a - b) / b < 1e-4 for a, b in zip(runs[True], runs[False])), runs
