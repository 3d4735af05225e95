"""Mamba-1 (selective scan) and Mamba-2 (SSD) mixers in plain PyTorch.

Parameter names follow mamba_ssm (in_proj, conv1d, x_proj, dt_proj, dt_bias, A_log, D,
norm, out_proj) so a checkpoint moves between this path and the fused CUDA kernels.

Both scans are parallel over the sequence: Mamba-1 uses a log-depth doubling scan inside
fixed-size chunks plus the same scan over chunk boundaries; Mamba-2 uses the chunked SSD
formulation (quadratic inside a chunk, linear recurrence across chunks). Neither loops over
time steps in Python. Each returns its final SSM state, and each mixer returns its final
conv state, so generation can continue from a prefill with O(1) work per token.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

_MAMBA_SSM = None


def _mamba_ssm():
    """Fused kernels if mamba_ssm imports (CUDA machines with the `gpu` extra), else False."""
    global _MAMBA_SSM
    if _MAMBA_SSM is None:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
            _MAMBA_SSM = {"selective_scan_fn": selective_scan_fn, "mamba_chunk_scan_combined": mamba_chunk_scan_combined}
        except Exception:
            _MAMBA_SSM = False
    return _MAMBA_SSM


def _shift(t, k, dim, fill):
    # Shift t by k along dim (towards later positions), filling the front with `fill`.
    front = torch.full_like(t.narrow(dim, 0, k), fill)
    return torch.cat([front, t.narrow(dim, 0, t.shape[dim] - k)], dim=dim)


def linear_scan(a, b, dim):
    """h_t = a_t * h_{t-1} + b_t along `dim`, h_{-1} = 0, in log2(T) doubling steps
    (Hillis-Steele). Returns (h, cumulative product of a). Decays a are in (0, 1], so the
    products never overflow, unlike a cumsum-of-logs trick with exp(-S)."""
    T = a.shape[dim]
    k = 1
    while k < T:
        b = b + a * _shift(b, k, dim, 0.0)
        a = a * _shift(a, k, dim, 1.0)
        k *= 2
    return b, a


def selective_scan(x, dt, A, B, C, D=None, z=None, initial_state=None, chunk_size=64):
    """Mamba-1 scan. x, dt: (b, l, d); A: (d, n); B, C: (b, l, n); initial_state: (b, d, n).
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t ;  y_t = C_t . h_t + D x_t ;  y *= silu(z).
    Returns y (b, l, d) and the final state (b, d, n)."""
    b, L, d = x.shape
    n = A.shape[1]
    dA = torch.exp(dt[..., None] * A)  # (b, l, d, n), in (0, 1]
    dBx = (dt * x)[..., None] * B[:, :, None, :]  # (b, l, d, n)
    if initial_state is not None:
        dBx = torch.cat([dBx[:, :1] + dA[:, :1] * initial_state[:, None], dBx[:, 1:]], dim=1)
    cs = min(chunk_size, L)
    nc = math.ceil(L / cs)
    pad = nc * cs - L
    if pad:  # padded steps carry the state unchanged: decay 1, input 0
        dA = F.pad(dA, (0, 0, 0, 0, 0, pad), value=1.0)
        dBx = F.pad(dBx, (0, 0, 0, 0, 0, pad), value=0.0)
    dA = dA.view(b, nc, cs, d, n)
    dBx = dBx.view(b, nc, cs, d, n)
    h_local, a_cum = linear_scan(dA, dBx, dim=2)  # state within each chunk, from zero
    h_end, _ = linear_scan(a_cum[:, :, -1], h_local[:, :, -1], dim=1)  # true state at each chunk end
    h_prev = torch.cat([torch.zeros_like(h_end[:, :1]), h_end[:, :-1]], dim=1)
    h = (h_local + a_cum * h_prev[:, :, None]).view(b, nc * cs, d, n)[:, :L]
    y = torch.einsum("bldn,bln->bld", h, C)
    if D is not None:
        y = y + x * D
    if z is not None:
        y = y * F.silu(z)
    return y, h[:, -1]


def segsum(x):
    """x: (..., T) -> (..., T, T) with out[i, j] = x[j+1] + ... + x[i] for j <= i, else -inf.
    Built by masked cumsum (not a difference of cumsums) so it stays exact in fp32."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)  # [..., i, j] = x_i
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1)
    s = torch.cumsum(x.masked_fill(~strict, 0.0), dim=-2)
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
    return s.masked_fill(~keep, float("-inf"))


# Largest in-chunk decay sum -sum(dt*A) for which ssd_scan factors exp(A_cum_l - A_cum_s): exp(40) ~ 2e17
# leaves fp32 (max ~3e38) room for the inputs it multiplies.
_FACTOR_MAX = 40.0


def _quadratic_decay(A_cum, causal):
    """exp(A_cum_l - A_cum_s) for s <= l, else 0: a difference of in-chunk cumsums (as mamba_ssm's
    kernels do), masked before the exp so the upper triangle is exp(-inf) = 0, not an overflow."""
    return torch.exp((A_cum[..., :, None] - A_cum[..., None, :]).masked_fill_(~causal, float("-inf")))


def ssd_scan(x, dt, A, B, C, chunk_size, D=None, initial_state=None):
    """Mamba-2 state-space duality scan. x: (b, l, h, p); dt: (b, l, h); A: (h,);
    B, C: (b, l, g, n); initial_state: (b, h, p, n). Returns y (b, l, h, p), final state.
    Every contraction is a batched matmul over (b, chunk, head or group): on CPU, generic
    einsums with three operands or a size-1 group axis copy and permute far more than this."""
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g  # heads per group share B and C
    cs = min(chunk_size, L)
    nc = math.ceil(L / cs)
    pad = nc * cs - L
    if pad:  # dt = 0 on padding: no decay, no input, so the final state is exact
        x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
    X = (x * dt[..., None]).view(b, nc, cs, h, p).transpose(2, 3)  # (b, c, h, l, p)
    B = B.view(b, nc, cs, g, n).transpose(2, 3)  # (b, c, g, l, n)
    C = C.view(b, nc, cs, g, n).transpose(2, 3)
    A_cum = torch.cumsum((dt * A).view(b, nc, cs, h).transpose(2, 3), dim=-1)  # (b, c, h, l), within each chunk
    # 1) within each chunk: y_l = sum_{s<=l} C_l.B_s exp(A_cum_l - A_cum_s) X_s. C.B is per group, not per head.
    causal = torch.ones(cs, cs, dtype=torch.bool, device=x.device).tril()
    CB = C @ B.transpose(-1, -2)  # (b, c, g, l, s)
    # Heads whose decay over a chunk stays small take the factored form exp(A_cum_l) * exp(-A_cum_s):
    # the heads of a group then share one masked C.B and a single matmul over their stacked columns,
    # with no (head, l, s) tensor (on CPU at L=4096 a layer's forward + backward went from 160 to
    # 122 ms). A_cum falls along the chunk, so exp(-A_cum) <= exp(_FACTOR_MAX) cannot
    # overflow, and for each l the s = l term has the largest weight (no cancellation). The other
    # heads (fast decays) keep the quadratic form. One group only: heads are then free to split.
    if g == 1:
        fast = (-A_cum[..., -1]).amax(dim=(0, 1)) >= _FACTOR_MAX  # (h,)
        y_diag = X.new_empty(b, nc, h, cs, p)
        if not bool(fast.all()):
            slow = (~fast).nonzero()[:, 0]
            Ac = A_cum[:, :, slow]  # (b, c, hs, l)
            hs = len(slow)
            Xs = (X[:, :, slow] * torch.exp(-Ac)[..., None]).transpose(2, 3).reshape(b, nc, 1, cs, hs * p)
            Y = CB.masked_fill(~causal, 0.0) @ Xs  # (b, c, 1, l, hs*p)
            y_diag[:, :, slow] = Y.view(b, nc, cs, hs, p).transpose(2, 3) * torch.exp(Ac)[..., None]
        if bool(fast.any()):
            idx = fast.nonzero()[:, 0]
            y_diag[:, :, idx] = (_quadratic_decay(A_cum[:, :, idx], causal) * CB) @ X[:, :, idx]
    else:
        decay = _quadratic_decay(A_cum, causal)  # (b, c, h, l, s)
        y_diag = (decay.view(b, nc, g, r, cs, cs) * CB[:, :, :, None]).view(b, nc, h, cs, cs) @ X  # (b, c, h, l, p)
    # 2) each chunk's own final state (from zero): sum_l exp(A_cum_end - A_cum_l) X_l B_l^T, with the
    # r heads of a group stacked as rows so B is shared without a per-head copy
    Xd = X * torch.exp(A_cum[..., -1:] - A_cum)[..., None]  # (b, c, h, l, p)
    Xd = Xd.view(b, nc, g, r, cs, p).permute(0, 1, 2, 3, 5, 4).reshape(b, nc, g, r * p, cs)
    states = (Xd @ B).view(b, nc, h, p, n)
    # 3) recurrence over chunk boundaries (c is small, so the quadratic form is cheap)
    if initial_state is None:
        initial_state = torch.zeros(b, h, p, n, dtype=x.dtype, device=x.device)
    states = torch.cat([initial_state[:, None], states], dim=1).transpose(1, 2)  # (b, h, c+1, p, n)
    decay_chunk = torch.exp(segsum(F.pad(A_cum[..., -1].transpose(1, 2), (1, 0))))  # (b, h, c+1, c+1)
    states = (decay_chunk @ states.reshape(b, h, nc + 1, p * n)).view(b, h, nc + 1, p, n)
    states, final_state = states[:, :, :-1], states[:, :, -1]  # state entering each chunk, state after the last
    # 4) contribution of the state entering each chunk: exp(A_cum_l) C_l . state
    S = states.reshape(b, g, r, nc, p, n).permute(0, 3, 1, 5, 2, 4).reshape(b, nc, g, n, r * p)
    y_off = (C @ S).view(b, nc, g, cs, r, p).transpose(2, 3).reshape(b, nc, cs, h, p)
    y_off = y_off * torch.exp(A_cum).permute(0, 1, 3, 2)[..., None]  # (b, c, l, h, p)
    y = (y_diag.transpose(2, 3) + y_off).reshape(b, nc * cs, h, p)[:, :L]
    if D is not None:
        y = y + x[:, :L] * D[:, None]
    return y, final_state


def _conv_with_state(xc, weight, bias, conv_state):
    """Depthwise causal conv over xc (b, l, c) continuing from conv_state (b, c, d_conv), the
    last d_conv inputs seen (zeros at the start). Returns output (b, l, c) and the new state.
    A sum of d_conv shifted products in the (b, l, c) layout: on CPU that is faster than a
    grouped F.conv1d (whose backward is slow) and keeps the output contiguous for what follows."""
    L, d_conv = xc.shape[1], weight.shape[-1]
    full = torch.cat([conv_state.transpose(1, 2), xc], dim=1)  # (b, d_conv + l, c)
    w = weight[:, 0].t()  # (d_conv, c)
    out = torch.addcmul(bias, full[:, 1:L + 1], w[0])  # out_t = bias + sum_k w_k full_{t+1+k}
    for k in range(1, d_conv):
        out = torch.addcmul(out, full[:, k + 1:k + 1 + L], w[k])
    return out, full[:, -d_conv:].transpose(1, 2).contiguous()


def _inv_softplus_dt(size, dt_min=0.001, dt_max=0.1, floor=1e-4):
    # dt log-uniform in [dt_min, dt_max], stored as its inverse softplus (mamba_ssm's init).
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


class Mamba1(nn.Module):
    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", chunk_size=64, layer_idx=0):
        super().__init__()
        self.layer_idx = layer_idx
        self.d_inner = expand * d_model
        self.d_state, self.d_conv, self.chunk_size = d_state, d_conv, chunk_size
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.reset_ssm_parameters()  # standalone use; in a GPT, GPT.init_weights sets every parameter

    @torch.no_grad()
    def reset_ssm_parameters(self):
        # mamba_ssm's init: dt_proj.weight U(+-dt_rank^-0.5), its bias the inverse softplus of a log-uniform dt,
        # A = -(1..d_state) per channel (S4D-real), D = 1 (a plain skip connection).
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        self.dt_proj.bias.copy_(_inv_softplus_dt(self.d_inner))
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D.fill_(1.0)

    def new_state(self, batch, device, dtype):
        return {"conv": torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=dtype),
                "ssm": torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=dtype)}

    def forward(self, u, valid=None, state=None):
        """u: (b, l, d_model). valid: (b, l) bool (False on left padding). state: dict with
        "conv" and "ssm", updated in place when given (inference)."""
        b, L, _ = u.shape
        if state is not None and L == 1:
            return self.step(u, state)
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (b, l, d_inner) each
        if valid is not None:  # padding must not touch the state: zero its conv input (and dt below)
            x = x * valid[..., None]
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        fused = _mamba_ssm() if (u.is_cuda and state is None and valid is None) else False
        if fused:
            xc = F.silu(self.conv1d(x.transpose(1, 2))[..., :L])  # (b, d_inner, l): the kernel is channels-first
            dbl = self.x_proj(xc.transpose(1, 2))  # (b, l, dt_rank + 2 d_state)
            dt, Bm, Cm = torch.split(dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
            dt = self.dt_proj.weight @ dt.transpose(1, 2)  # (b, d_inner, l); bias and softplus are fused
            y = fused["selective_scan_fn"](xc, dt, A, Bm.transpose(1, 2).contiguous(), Cm.transpose(1, 2).contiguous(),
                                           self.D.float(), z=z.transpose(1, 2), delta_bias=self.dt_proj.bias.float(),
                                           delta_softplus=True)
            return self.out_proj(y.transpose(1, 2))  # y (b, d_inner, l) -> (b, l, d_model)
        conv_state = state["conv"] if state is not None else x.new_zeros(b, self.d_inner, self.d_conv)
        xc, new_conv = _conv_with_state(x, self.conv1d.weight, self.conv1d.bias, conv_state)
        xc = F.silu(xc)  # (b, l, d_inner)
        dt, Bm, Cm = torch.split(self.x_proj(xc), [self.dt_rank, self.d_state, self.d_state], dim=-1)  # Bm, Cm: (b, l, d_state)
        dt = F.softplus(self.dt_proj(dt).float())  # (b, l, dt_rank) -> (b, l, d_inner)
        if valid is not None:
            dt = dt * valid[..., None]
        h0 = state["ssm"] if state is not None else None
        dtype = xc.dtype
        args = (xc.float(), dt, A, Bm.float(), Cm.float(), self.D.float(), z.float(), h0, self.chunk_size)
        with torch.autocast(u.device.type, enabled=False):  # fp32 scan under bf16 autocast, as mamba-ssm
            if torch.is_grad_enabled():
                # The scan materializes (b, l, d_inner, d_state) several times over; recompute it in
                # backward instead of keeping every layer's copies alive (4x less memory at L=4096).
                y, ssm = torch.utils.checkpoint.checkpoint(selective_scan, *args, use_reentrant=False)
            else:
                y, ssm = selective_scan(*args)  # (b, l, d_inner), (b, d_inner, d_state)
        y = y.to(dtype)
        if state is not None:
            state["conv"], state["ssm"] = new_conv, ssm
        return self.out_proj(y)  # (b, l, d_model)

    def step(self, u, state):
        """One token: O(1) in the context length."""
        x, z = self.in_proj(u[:, 0]).chunk(2, dim=-1)  # (b, d_inner) each
        conv = torch.cat([state["conv"][..., 1:], x[..., None]], dim=-1)  # (b, d_inner, d_conv)
        xc = F.silu((conv * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)  # (b, d_inner)
        dt, Bm, Cm = torch.split(self.x_proj(xc), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        A = -torch.exp(self.A_log.float())
        ssm = state["ssm"] * torch.exp(dt[..., None] * A) + (dt * xc)[..., None] * Bm[:, None, :]  # (b, d_inner, d_state)
        y = torch.einsum("bdn,bn->bd", ssm, Cm) + self.D * xc  # (b, d_inner)
        y = y * F.silu(z)
        state["conv"], state["ssm"] = conv, ssm
        return self.out_proj(y)[:, None]  # (b, 1, d_model)


class Mamba2(nn.Module):
    def __init__(self, d_model, d_state=64, d_conv=4, expand=2, headdim=32, ngroups=1, chunk_size=64, layer_idx=0):
        super().__init__()
        self.layer_idx = layer_idx
        self.d_inner = expand * d_model
        assert self.d_inner % headdim == 0, f"expand*n_embd={self.d_inner} must be a multiple of headdim={headdim}"
        self.nheads = self.d_inner // headdim
        assert self.nheads % ngroups == 0, f"nheads={self.nheads} must be a multiple of ngroups={ngroups}"
        self.d_state, self.d_conv, self.headdim, self.ngroups, self.chunk_size = d_state, d_conv, headdim, ngroups, chunk_size
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1, bias=True)
        self.dt_bias = nn.Parameter(torch.zeros(self.nheads))
        self.A_log = nn.Parameter(torch.zeros(self.nheads))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.reset_ssm_parameters()  # standalone use; in a GPT, GPT.init_weights sets every parameter

    @torch.no_grad()
    def reset_ssm_parameters(self):
        # mamba_ssm's Mamba2 init: dt_bias as in Mamba1, one A per head from U(1, 16), D = 1, norm = 1.
        self.dt_bias.copy_(_inv_softplus_dt(self.nheads))
        self.A_log.copy_(torch.log(torch.empty(self.nheads).uniform_(1, 16)))
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)

    def new_state(self, batch, device, dtype):
        return {"conv": torch.zeros(batch, self.conv_dim, self.d_conv, device=device, dtype=dtype),
                "ssm": torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device, dtype=dtype)}

    def _split(self, zxbcdt):
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _in_proj(self, u):
        # One matmul per output (z, xBC, dt) over row blocks of in_proj.weight: the full width
        # 2 d_inner + 2 g n + h is odd (1007 at d_model 240), where MKL's sgemm runs at half speed,
        # and separate outputs come out contiguous for the conv and the gate.
        return [F.linear(u, w) for w in torch.split(self.in_proj.weight, [self.d_inner, self.conv_dim, self.nheads])]

    def forward(self, u, valid=None, state=None):
        """u: (b, l, d_model); valid and state as in Mamba1."""
        b, L, _ = u.shape
        if state is not None and L == 1:
            return self.step(u, state)
        z, xBC, dt = self._in_proj(u)  # (b, l, d_inner), (b, l, conv_dim), (b, l, nheads)
        if valid is not None:
            xBC = xBC * valid[..., None]
        A = -torch.exp(self.A_log.float())  # (nheads,): one scalar decay per head
        conv_state = state["conv"] if state is not None else xBC.new_zeros(b, self.conv_dim, self.d_conv)
        xBC, new_conv = _conv_with_state(xBC, self.conv1d.weight, self.conv1d.bias, conv_state)
        xBC = F.silu(xBC)
        x, Bm, Cm = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = x.view(b, L, self.nheads, self.headdim)  # (b, l, h, p)
        Bm = Bm.view(b, L, self.ngroups, self.d_state)  # Bm, Cm: (b, l, g, n)
        Cm = Cm.view(b, L, self.ngroups, self.d_state)
        fused = _mamba_ssm() if (u.is_cuda and state is None and valid is None) else False
        if fused:
            y = fused["mamba_chunk_scan_combined"](x, dt, A, Bm, Cm, chunk_size=self.chunk_size, D=self.D,
                                                   dt_bias=self.dt_bias, dt_softplus=True)
        else:
            # The scan's cumulative sums and exponentials run in fp32 even under bf16 autocast, as
            # mamba-ssm's kernels keep them; A_log, D and dt_bias are fp32 parameters throughout.
            dt = F.softplus(dt.float() + self.dt_bias.float())
            if valid is not None:
                dt = dt * valid[..., None]
            with torch.autocast(u.device.type, enabled=False):
                y, ssm = ssd_scan(x.float(), dt, A, Bm.float(), Cm.float(), self.chunk_size, self.D.float(),
                                  state["ssm"] if state is not None else None)  # (b, l, h, p)
            y = y.to(x.dtype)
            if state is not None:
                state["conv"], state["ssm"] = new_conv, ssm
        y = self.norm(y.reshape(b, L, self.d_inner), z)  # (b, l, d_inner), heads side by side
        return self.out_proj(y)  # (b, l, d_model)

    def step(self, u, state):
        z, xBC, dt = self._split(self.in_proj(u[:, 0]))  # (b, d_inner), (b, conv_dim), (b, h)
        conv = torch.cat([state["conv"][..., 1:], xBC[..., None]], dim=-1)  # (b, conv_dim, d_conv)
        xBC = F.silu((conv * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)  # (b, conv_dim)
        x, Bm, Cm = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        b = x.shape[0]
        x = x.view(b, self.nheads, self.headdim)  # (b, h, p)
        rep = self.nheads // self.ngroups
        Bm = Bm.view(b, self.ngroups, self.d_state).repeat_interleave(rep, dim=1)  # (b, h, n)
        Cm = Cm.view(b, self.ngroups, self.d_state).repeat_interleave(rep, dim=1)
        dt = F.softplus(dt + self.dt_bias)  # (b, h)
        A = -torch.exp(self.A_log.float())
        ssm = state["ssm"] * torch.exp(dt * A)[..., None, None] + (dt[..., None] * x)[..., None] * Bm[:, :, None, :]  # (b, h, p, n)
        y = torch.einsum("bhpn,bhn->bhp", ssm, Cm) + self.D[:, None] * x  # (b, h, p)
        state["conv"], state["ssm"] = conv, ssm
        y = self.norm(y.reshape(b, 1, self.d_inner), z[:, None])  # (b, 1, d_inner)
        return self.out_proj(y)  # (b, 1, d_model)


class GatedRMSNorm(nn.Module):
    """mamba_ssm's RMSNormGated with norm_before_gate=False: rmsnorm(y * silu(z)) * weight,
    normalized per group of channels."""

    def __init__(self, d, group_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.group_size, self.eps = group_size, eps

    def forward(self, y, z):
        y = y * F.silu(z)
        shape = y.shape
        y = y.view(*shape[:-1], -1, self.group_size)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.view(shape) * self.weight
