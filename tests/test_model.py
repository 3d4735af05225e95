"""Model specs: cached decoding equals the full forward pass; greedy generation with the
cache equals repeated uncached forwards; a tiny hybrid overfits a batch; bad configs fail."""
import pytest
import torch

from nanochat_core.engine import Engine
from nanochat_core.model import GPT, GPTConfig, InferenceCache

CASES = [("T", "mamba2"), ("M", "mamba1"), ("M", "mamba2"), ("TM", "mamba2"), ("TM", "mamba1"), ("MMTM", "mamba2"),
         ("MMTM", "mamba1")]
V = 97


def make_model(pattern, ssm, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=V, n_layer=len(pattern), n_embd=32, n_head=4, n_kv_head=2, block_pattern=pattern,
                    ssm=ssm, d_state=8, headdim=16, chunk_size=8, sequence_len=64)
    model = GPT(cfg)
    # The default init zeroes every residual output projection; randomize everything that is
    # a matrix so each mixer really contributes to the logits under test.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and not name.endswith("dt_proj.weight"):
                p.normal_(0, p.shape[1] ** -0.5)
    return model.eval()


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("pattern,ssm", CASES)
def test_prefill_plus_decode_equals_full_forward(pattern, ssm):
    model = make_model(pattern, ssm)
    g = torch.Generator().manual_seed(1)
    lens, n_new = [5, 12, 19], 9
    seqs = [torch.randint(0, V, (n + n_new,), generator=g) for n in lens]
    B, P = len(lens), max(lens)
    idx = torch.zeros(B, P, dtype=torch.long)
    valid = torch.zeros(B, P, dtype=torch.bool)
    for b, n in enumerate(lens):
        idx[b, P - n:] = seqs[b][:n]
        valid[b, P - n:] = True
    cache = InferenceCache(model, B, P + n_new)
    cache.offset = P - valid.sum(1)
    with torch.no_grad():
        pre = model(idx, valid=valid, cache=cache)
        steps = []
        for t in range(n_new):
            col = torch.stack([seqs[b][lens[b] + t] for b in range(B)])[:, None]
            steps.append(model(col, cache=cache)[:, 0])
        for b, n in enumerate(lens):
            full = model(seqs[b][None])[0]  # (n + n_new, V), this row alone, no padding
            assert rel_err(pre[b, P - n:], full[:n]) <= 1e-4
            dec = torch.stack([s[b] for s in steps])
            # decode step t consumed token n+t, so its logits are the full pass's at n+t
            assert rel_err(dec, full[n:n + n_new]) <= 1e-4


@pytest.mark.parametrize("pattern,ssm", CASES)
def test_multi_token_chunks_after_prefill_equal_full_forward(pattern, ssm):
    # The engine feeds forced tool output in chunks: prefill, a chunk, one step, a chunk.
    model = make_model(pattern, ssm, seed=5)
    seq = torch.randint(0, V, (1, 40), generator=torch.Generator().manual_seed(9))
    cache = InferenceCache(model, 1, 40)
    with torch.no_grad():
        parts = [model(seq[:, a:b], cache=cache) for a, b in [(0, 11), (11, 24), (24, 25), (25, 40)]]
        full = model(seq)
    assert rel_err(torch.cat(parts, 1), full) <= 1e-4


@pytest.mark.parametrize("pattern,ssm", CASES)
def test_greedy_generation_matches_uncached_forwards(pattern, ssm):
    model = make_model(pattern, ssm, seed=2)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (3, 10, 6)]
    out, masks = Engine(model).generate_batch(prompts, max_tokens=12, temperature=0.0)
    with torch.no_grad():
        for p, o, m in zip(prompts, out, masks):
            seq = list(p)
            for _ in range(12):
                seq.append(model(torch.tensor([seq]))[0, -1].argmax().item())
            assert o == seq[len(p):]
            assert m == [1] * 12


def test_stop_tokens_and_sampling_are_reproducible():
    model = make_model("TM", "mamba2", seed=4)
    eng = Engine(model)
    prompts = [[1, 2, 3], [4, 5]]
    a = eng.generate_batch(prompts, max_tokens=20, temperature=1.0, top_k=5, seed=7)
    b = eng.generate_batch(prompts, max_tokens=20, temperature=1.0, top_k=5, seed=7)
    assert a == b
    # top_k=1 sampling is greedy
    assert eng.generate_batch(prompts, 10, temperature=1.0, top_k=1)[0] == eng.generate_batch(prompts, 10)[0]
    # stopping: pick the greedy 3rd token of row 0 as a stop token; row 0 ends there
    greedy = eng.generate_batch(prompts, 10)[0]
    stop = greedy[0][2]
    out, _ = eng.generate_batch(prompts, 10, stop_tokens=[stop])
    assert out[0] == greedy[0][:greedy[0].index(stop)]


def test_tiny_hybrid_overfits_one_batch():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, block_pattern="TM", ssm="mamba2",
                    d_state=16, headdim=32, sequence_len=32)
    model = GPT(cfg)
    opts = model.setup_optimizers(matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.02, scalar_lr=0.02)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (4, 32), generator=g)
    y = torch.randint(0, 64, (4, 32), generator=g)
    y[:, :3] = -1  # ignored positions must not count
    loss = None
    for step in range(300):
        loss = model(x, y)
        loss.backward()
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1, f"loss {loss.item():.3f} after {step + 1} steps"


def test_loss_mask_ignores_positions():
    model = make_model("TM", "mamba2")
    x = torch.randint(0, V, (2, 10))
    y = torch.randint(0, V, (2, 10))
    y_masked = y.clone()
    y_masked[:, 5:] = -1
    full = model(x, y, reduction="none").view(2, 10)
    assert torch.allclose(model(x, y_masked), full[:, :5].mean())
    # The training path runs the lm_head only on target positions: same loss, same gradients
    # as the full-vocabulary path over every position.
    model.zero_grad()
    model(x, y_masked).backward()
    sparse = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model(x, y_masked, reduction="none").view(2, 10)[:, :5].mean().backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(sparse[n], p.grad, atol=1e-6), n


@pytest.mark.parametrize("kw,msg", [
    (dict(n_layer=3, block_pattern="TMX"), "invalid characters"),
    (dict(n_layer=4, block_pattern="TMT"), "has 3 layers but model.n_layer is 4"),
    (dict(ssm="mamba3", block_pattern="M", n_layer=1), "model.ssm must be"),
    (dict(n_head=3), "divisible by model.n_head"),
])
def test_bad_config_is_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GPTConfig(**{"vocab_size": 50, "n_embd": 32, "n_head": 4, "n_kv_head": 2, **kw})


def test_batch_without_targets_has_zero_loss_not_nan():
    # A fine-tuning batch whose answers were all truncated away must not poison the weights.
    model = make_model("TM", "mamba2")
    x = torch.randint(0, V, (2, 6))
    loss = model(x, torch.full((2, 6), -1))
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_cache_grows_past_its_planned_length():
    # Forced tool output can make a sequence longer than the cache was sized for.
    model = make_model("TM", "mamba2", seed=6)
    seq = torch.randint(0, V, (1, 30), generator=torch.Generator().manual_seed(1))
    cache = InferenceCache(model, 1, 8)
    with torch.no_grad():
        parts = [model(seq[:, :6], cache=cache)] + [model(seq[:, t:t + 1], cache=cache) for t in range(6, 30)]
        full = model(seq)
    assert cache.max_len >= 30
    assert rel_err(torch.cat(parts, 1), full) <= 1e-4
