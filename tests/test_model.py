"""Model specs: cached decoding equals the full forward pass; greedy generation with the
cache equals repeated uncached forwards; a tiny hybrid overfits a batch; bad configs fail;
init_weights alone decides the initial weights (bit-identical to the old per-module init);
the optimizer groups hold every parameter exactly once."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat_core.engine import Engine
from nanochat_core.model import GPT, GPTConfig, InferenceCache
from nanochat_core.model.gpt import Block

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


INIT_CASES = [("TMTM", "mamba2"), ("MMMM", "mamba1"), ("TTTT", "mamba2"), ("MTTM", "mamba1")]


def small_config(pattern, ssm, **kw):
    return GPTConfig(**{"vocab_size": V, "n_layer": len(pattern), "n_embd": 32, "n_head": 4, "n_kv_head": 2,
                        "block_pattern": pattern, "ssm": ssm, "d_state": 8, "headdim": 16, "chunk_size": 8, **kw})


@pytest.mark.parametrize("pattern,ssm", INIT_CASES)
def test_init_weights_alone_decides_every_parameter(pattern, ssm):
    # Construction is init_weights from the seed: poison every parameter, rerun it after the same
    # seed, and the constructed weights must come back bit for bit. A parameter it forgot stays
    # NaN; a draw that happened outside it (at construction) would shift the values it draws.
    torch.manual_seed(0)
    model = GPT(small_config(pattern, ssm))
    built = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    torch.manual_seed(0)
    model.init_weights()
    for k, v in model.state_dict().items():
        assert torch.equal(v, built[k]), k


def legacy_init(config):
    """The init before GPT.init_weights set every parameter, kept verbatim as the reference: the
    modules initialized themselves as they were built, then nanochat's loop over the Linears."""
    legacy = nn.Module()
    legacy.transformer = nn.ModuleDict({
        "wte": nn.Embedding(config.vocab_size, config.n_embd),
        "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
    })
    legacy.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
    with torch.no_grad():
        nn.init.normal_(legacy.transformer.wte.weight, std=1.0)
        nn.init.normal_(legacy.lm_head.weight, std=0.001)
        for name, m in legacy.named_modules():
            if isinstance(m, nn.Linear) and m is not legacy.lm_head and not name.endswith("dt_proj"):
                if name.endswith("c_proj") or name.endswith("out_proj"):
                    nn.init.zeros_(m.weight)
                else:
                    nn.init.normal_(m.weight, std=m.in_features ** -0.5)
    return legacy


@pytest.mark.parametrize("config", [small_config(p, s) for p, s in INIT_CASES]
                         + [small_config("TMMT", "mamba2", ngroups=2), small_config("MM", "mamba1", dt_rank=3), GPTConfig()],
                         ids=lambda c: f"{c.block_pattern}-{c.ssm}-d{c.n_embd}-g{c.ngroups}")
def test_init_weights_is_bit_identical_to_the_old_init(config):
    # Same seed, same weights as before the named init, and the RNG left in the same state, so
    # runs seeded before this change (and whatever they draw after building the model) reproduce.
    torch.manual_seed(0)
    old = legacy_init(config).state_dict()
    old_rng = torch.get_rng_state()
    torch.manual_seed(0)
    new = GPT(config).state_dict()
    assert old.keys() == new.keys()
    for k in old:
        assert torch.equal(old[k], new[k]), k
    assert torch.equal(torch.get_rng_state(), old_rng)


@pytest.mark.parametrize("pattern,ssm", INIT_CASES)
def test_named_init_follows_the_scheme(pattern, ssm):
    torch.manual_seed(0)
    cfg = small_config(pattern, ssm, vocab_size=4096)  # enough entries for the std checks below
    model = GPT(cfg)
    assert abs(model.transformer.wte.weight.std().item() - 1.0) < 0.05
    assert abs(model.lm_head.weight.std().item() - 0.001) < 0.0001
    for block in model.transformer.h:
        m = block.mixer
        outputs = [m.c_proj if block.kind == "T" else m.out_proj, block.mlp.c_proj]
        assert all(not o.weight.any() for o in outputs)  # each residual branch starts at zero
        inputs = [m.c_q, m.c_k, m.c_v] if block.kind == "T" else [m.in_proj] + ([m.x_proj] if ssm == "mamba1" else [])
        for lin in inputs + [block.mlp.c_fc]:
            assert abs(lin.weight.std().item() * lin.in_features ** 0.5 - 1.0) < 0.15
        if block.kind == "T":
            continue
        bound = cfg.d_conv ** -0.5  # PyTorch's conv default: U(+-1/sqrt(fan_in)), fan_in = d_conv (depthwise)
        assert m.conv1d.weight.abs().max() <= bound and m.conv1d.bias.abs().max() <= bound
        assert m.conv1d.weight.std() > bound / 4  # drawn, not left at a constant
        assert torch.equal(m.D, torch.ones_like(m.D))
        if ssm == "mamba1":
            dt = F.softplus(m.dt_proj.bias)
            assert m.dt_proj.weight.abs().max() <= m.dt_rank ** -0.5
            assert torch.allclose(m.A_log, torch.log(torch.arange(1, cfg.d_state + 1.0)).expand_as(m.A_log))
        else:
            dt = F.softplus(m.dt_bias)
            A = m.A_log.exp()
            assert (A >= 1).all() and (A <= 16).all() and A.std() > 0
            assert torch.equal(m.norm.weight, torch.ones_like(m.norm.weight))
        assert (dt >= 1e-3 * 0.999).all() and (dt <= 0.1 * 1.001).all() and dt.std() > 0


@pytest.mark.parametrize("pattern,ssm", INIT_CASES)
def test_optimizer_groups_hold_every_parameter_once(pattern, ssm):
    model = GPT(small_config(pattern, ssm))
    params = [p for opt in model.setup_optimizers() for g in opt.param_groups for p in g["params"]]
    assert len({id(p) for p in params}) == len(params)
    assert sum(p.numel() for p in params) == sum(p.numel() for p in model.parameters())
    assert {id(p) for p in params} == {id(p) for p in model.parameters()}


def test_optimizer_groups_refuse_a_parameter_left_out():
    # A new parameter outside wte, lm_head and the blocks falls through every group and would
    # silently never train.
    model = GPT(small_config("TM", "mamba2"))
    model.extra_gain = nn.Parameter(torch.ones(4))
    with pytest.raises(AssertionError, match=r"in no group: \['extra_gain'\]"):
        model.setup_optimizers()


@pytest.mark.parametrize("tie,name", [
    # Weight tying puts one tensor in two AdamW groups (torch would also refuse this one) ...
    (lambda m: m.transformer.wte.weight, "transformer.wte.weight"),
    # ... and a block matrix shared into the lm_head lands in AdamW and Muon, which torch never
    # sees: it would take two updates per step.
    (lambda m: m.transformer.h[0].mixer.c_q.weight, "transformer.h.0.mixer.c_q.weight"),
], ids=["tied-embedding", "adamw-and-muon"])
def test_optimizer_groups_refuse_a_parameter_in_two_groups(tie, name):
    model = GPT(small_config("TM", "mamba2"))
    model.lm_head.weight = tie(model)
    with pytest.raises(AssertionError, match=rf"in more than one group: \['{name}'\]"):
        model.setup_optimizers()
