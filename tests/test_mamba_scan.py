"""The chunked parallel scans must equal a plain sequential recurrence written here."""
import pytest
import torch
import torch.nn.functional as F

from nanochat_core.model.mamba import selective_scan, ssd_scan

LENGTHS = [1, 7, 64, 100, 300]  # not all multiples of the chunk size (32 below)


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def assert_matches_reference(y, h, y_ref, h_ref, leaves, finite=False):
    """Outputs and final states within 1e-4 of the recurrence, and the gradients of a random
    projection of both within 1e-3, for every leaf."""
    if finite:
        assert torch.isfinite(y).all()
    assert rel_err(y, y_ref) <= 1e-4
    assert rel_err(h, h_ref) <= 1e-4
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum() + h.sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * w).sum() + h_ref.sum(), leaves)
    for a, b in zip(grads, grads_ref):
        if finite:
            assert torch.isfinite(a).all()
        assert rel_err(a, b) <= 1e-3


def ref_mamba1(x, dt, A, B, C, D, z, h0):
    # h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, one step at a time.
    b, L, d = x.shape
    h = h0.clone()
    ys = []
    for t in range(L):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]) + D * x[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return y, h


def ref_mamba2(x, dt, A, B, C, D, h0):
    b, L, h, p = x.shape
    rep = h // B.shape[2]
    Bh, Ch = B.repeat_interleave(rep, 2), C.repeat_interleave(rep, 2)
    s = h0.clone()
    ys = []
    for t in range(L):
        s = torch.exp(dt[:, t] * A)[..., None, None] * s + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", s, Ch[:, t]) + D[:, None] * x[:, t])
    return torch.stack(ys, 1), s


def mamba1_inputs(L, seed, b=2, d=6, n=4):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    x, z = r(b, L, d), r(b, L, d)
    dt = F.softplus(r(b, L, d) - 1)  # realistic positive step sizes, some large
    A = -torch.exp(r(d, n) * 0.5)
    B, C, D = r(b, L, n), r(b, L, n), r(d)
    h0 = r(b, d, n)
    return x, dt, A, B, C, D, z, h0


def mamba2_inputs(L, seed, b=2, h=4, p=3, g_=2, n=5):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    x = r(b, L, h, p)
    dt = F.softplus(r(b, L, h) - 1)
    A = -torch.exp(r(h) * 0.5)
    B, C, D = r(b, L, g_, n), r(b, L, g_, n), r(h)
    h0 = r(b, h, p, n)
    return x, dt, A, B, C, D, h0


@pytest.mark.parametrize("L", LENGTHS)
def test_mamba1_chunked_scan_matches_recurrence(L):
    x, dt, A, B, C, D, z, h0 = mamba1_inputs(L, seed=L)
    leaves = [x, dt, B, C, h0]
    for t in leaves:
        t.requires_grad_(True)
    y, h = selective_scan(x, dt, A, B, C, D, z, initial_state=h0, chunk_size=32)
    assert_matches_reference(y, h, *ref_mamba1(x, dt, A, B, C, D, z, h0), leaves)


@pytest.mark.parametrize("L", LENGTHS)
def test_mamba2_ssd_scan_matches_recurrence(L):
    x, dt, A, B, C, D, h0 = mamba2_inputs(L, seed=100 + L)
    leaves = [x, dt, B, C, h0]
    for t in leaves:
        t.requires_grad_(True)
    y, s = ssd_scan(x, dt, A, B, C, chunk_size=32, D=D, initial_state=h0)
    assert_matches_reference(y, s, *ref_mamba2(x, dt, A, B, C, D, h0), leaves)


def test_scans_do_not_depend_on_chunk_size():
    # The chunk boundary bookkeeping is where bugs hide: every chunking must agree.
    x, dt, A, B, C, D, z, h0 = mamba1_inputs(50, seed=1)
    ys = [selective_scan(x, dt, A, B, C, D, z, h0, chunk_size=cs)[0] for cs in (1, 5, 16, 64)]
    for y in ys[1:]:
        assert rel_err(y, ys[0]) <= 1e-5
    x, dt, A, B, C, D, h0 = mamba2_inputs(50, seed=2)
    ys = [ssd_scan(x, dt, A, B, C, cs, D, h0)[0] for cs in (1, 5, 16, 64)]
    for y in ys[1:]:
        assert rel_err(y, ys[0]) <= 1e-5


def test_mamba1_scan_is_stable_with_strong_decay():
    # Large dt*|A| over long chunks would overflow a cumsum-of-logs formulation.
    x, dt, A, B, C, D, z, h0 = mamba1_inputs(300, seed=3)
    dt = dt * 20
    y, h = selective_scan(x, dt, A, B, C, D, z, h0, chunk_size=128)
    y_ref, h_ref = ref_mamba1(x, dt, A, B, C, D, z, h0)
    assert torch.isfinite(y).all()
    assert rel_err(y, y_ref) <= 1e-4


def test_mamba2_scan_gradients_do_not_depend_on_chunk_size():
    # ssd_scan regroups heads and chunks for its matmuls; gradients must survive every chunking.
    x, dt, A, B, C, D, h0 = mamba2_inputs(50, seed=4)
    leaves = [x, dt, B, C, h0]
    for t in leaves:
        t.requires_grad_(True)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    grads = []
    for cs in (1, 5, 16, 64):
        y, s = ssd_scan(x, dt, A, B, C, cs, D, h0)
        grads.append(torch.autograd.grad((y * w).sum() + s.sum(), leaves))
    for gs in grads[1:]:
        for a, b in zip(gs, grads[0]):
            assert rel_err(a, b) <= 1e-5


def test_mamba2_scan_is_stable_with_strong_decay():
    # In-chunk decays are differences of cumsums: exact enough, and no overflow or NaN, even when
    # dt*|A| sums to hundreds over a chunk.
    x, dt, A, B, C, D, h0 = mamba2_inputs(300, seed=3)
    dt = (dt * 20).requires_grad_(True)
    leaves = [x.requires_grad_(True), dt, B.requires_grad_(True), C.requires_grad_(True), h0.requires_grad_(True)]
    y, s = ssd_scan(x, dt, A, B, C, 64, D, h0)
    assert_matches_reference(y, s, *ref_mamba2(x, dt, A, B, C, D, h0), leaves, finite=True)


@pytest.mark.parametrize("scales", [(0.1, 0.1, 0.1, 0.1), (0.1, 60, 0.1, 60), (60, 60, 60, 60)])
def test_mamba2_factored_and_quadratic_heads_match_recurrence(scales):
    # With one group, ssd_scan takes the factored in-chunk form exp(A_l) * exp(-A_s) for heads whose
    # decay over a chunk stays under _FACTOR_MAX and the quadratic form for the rest: each mix of the
    # two must equal the recurrence, values and gradients.
    from nanochat_core.model.mamba import _FACTOR_MAX
    x, dt, A, B, C, D, h0 = mamba2_inputs(150, seed=7, g_=1)
    dt = dt * torch.tensor(scales, dtype=dt.dtype)
    chunk_decay = -(dt * A)[:, :128].reshape(2, 2, 64, 4).sum(2).amax(dim=(0, 1))  # per head, chunk size 64
    assert ((chunk_decay >= _FACTOR_MAX) == torch.tensor([s > 1 for s in scales])).all()  # the mix asked for
    leaves = [x, dt.requires_grad_(True), B, C, h0]
    for t in (x, B, C, h0):
        t.requires_grad_(True)
    y, s = ssd_scan(x, dt, A, B, C, 64, D, h0)
    assert_matches_reference(y, s, *ref_mamba2(x, dt, A, B, C, D, h0), leaves, finite=True)
