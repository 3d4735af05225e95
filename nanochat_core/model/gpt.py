"""The hybrid GPT: each layer is a mixer (attention "T" or Mamba "M") plus a ReLU^2 MLP,
with pre-norm residuals. A pure-"T" pattern is plain nanochat: RoPE, QK-norm, untied
embeddings, parameter-free RMSNorm, no biases, GQA and a logit softcap.
"""
from collections import Counter
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat_core.model.attention import CausalSelfAttention, norm, rotary_cos_sin
from nanochat_core.model.mamba import Mamba1, Mamba2


@dataclass
class GPTConfig:
    sequence_len: int = 256
    vocab_size: int = 2048
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_kv_head: int = 4
    block_pattern: str = ""  # one char per layer, "T" or "M"; empty means all attention
    mlp_ratio: int = 4
    softcap: float = 15.0
    ssm: str = "mamba2"  # "mamba1" | "mamba2"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: str | int = "auto"  # mamba1
    headdim: int = 32  # mamba2
    ngroups: int = 1  # mamba2
    chunk_size: int = 64

    def __post_init__(self):
        if not self.block_pattern:
            self.block_pattern = "T" * self.n_layer
        self.validate()

    def validate(self):
        bad = set(self.block_pattern) - {"T", "M"}
        if bad:
            raise ValueError(f"model.block_pattern {self.block_pattern!r} has invalid characters {sorted(bad)}; "
                             "use only 'T' (attention) and 'M' (Mamba), e.g. 'TTMM'")
        if len(self.block_pattern) != self.n_layer:
            raise ValueError(f"model.block_pattern {self.block_pattern!r} has {len(self.block_pattern)} layers "
                             f"but model.n_layer is {self.n_layer}; make them match")
        if self.ssm not in ("mamba1", "mamba2"):
            raise ValueError(f"model.ssm must be 'mamba1' or 'mamba2', got {self.ssm!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head dim n_embd/n_head={self.n_embd // self.n_head} must be even for RoPE")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"model.n_head={self.n_head} must be a multiple of model.n_kv_head={self.n_kv_head} (GQA)")
        if "M" in self.block_pattern and self.ssm == "mamba2":
            d_inner = self.expand * self.n_embd
            if d_inner % self.headdim or (d_inner // self.headdim) % self.ngroups:
                raise ValueError(f"mamba2 needs expand*n_embd={d_inner} divisible by model.headdim={self.headdim} "
                                 f"and the head count by model.ngroups={self.ngroups}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**d)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        h = F.relu(self.c_fc(x)).square()  # (B, T, mlp_ratio * C)
        return self.c_proj(h)  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.kind = config.block_pattern[layer_idx]
        if self.kind == "T":
            self.mixer = CausalSelfAttention(config, layer_idx)
        elif config.ssm == "mamba1":
            self.mixer = Mamba1(config.n_embd, config.d_state, config.d_conv, config.expand, config.dt_rank,
                                config.chunk_size, layer_idx)
        else:
            self.mixer = Mamba2(config.n_embd, config.d_state, config.d_conv, config.expand, config.headdim,
                                config.ngroups, config.chunk_size, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos_sin, valid, cache):
        if self.kind == "T":
            x = x + self.mixer(norm(x), cos_sin, valid, cache)
        else:
            state = cache.layers[self.mixer.layer_idx] if cache is not None else None
            x = x + self.mixer(norm(x), valid, state)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # Build on the meta device (no memory, no random draws), then allocate where the caller
        # builds (the default device) and let init_weights draw every value: the initial weights
        # are decided in one place, as a function of the torch seed alone.
        device = torch.get_default_device()
        with torch.device("meta"):
            self.transformer = nn.ModuleDict({
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            })
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.to_empty(device=device)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Set every parameter, by name. GPT() calls this once; calling it again after the same
        torch.manual_seed gives the same weights. Two passes over the RNG stream, in this order:
        1) PyTorch's default init of each module in construction order, then mamba_ssm's SSM
           init. Only conv1d and the SSM parameters keep these values. The rest are drawn only
           to keep the RNG stream of earlier versions (whose modules initialized themselves as
           they were built), so a seed still gives bit-identical weights.
        2) nanochat's scheme: embeddings N(0, 1), a near-zero lm_head, input projections
           N(0, 1/fan_in), and every residual branch's output projection at zero so each layer
           starts as the identity."""
        wte, lm_head, mamba1 = self.transformer.wte, self.lm_head, self.config.ssm == "mamba1"
        # 1) Construction-order defaults: kaiming-uniform weights, uniform biases, wte N(0, 1).
        wte.reset_parameters()
        for block in self.transformer.h:
            m = block.mixer
            if block.kind == "T":
                modules = [m.c_q, m.c_k, m.c_v, m.c_proj]
            elif mamba1:
                modules = [m.in_proj, m.conv1d, m.x_proj, m.dt_proj, m.out_proj]
            else:
                modules = [m.in_proj, m.conv1d, m.out_proj]
            for mod in modules:
                mod.reset_parameters()
            if block.kind == "M":
                # mamba_ssm's init (mamba.py): dt = softplus(bias) log-uniform in [1e-3, 0.1] (Mamba1
                # dt_proj.bias, Mamba2 dt_bias), Mamba1 dt_proj.weight U(+-dt_rank^-0.5); A_log = log of
                # 1..d_state (Mamba1) or of U(1, 16) per head (Mamba2); D = 1; Mamba2 norm.weight = 1.
                m.reset_ssm_parameters()
            block.mlp.c_fc.reset_parameters()
            block.mlp.c_proj.reset_parameters()
        lm_head.reset_parameters()
        # 2) nanochat's scheme over the matrices; conv1d, dt_proj and the SSM vectors keep 1).
        nn.init.normal_(wte.weight, std=1.0)
        nn.init.normal_(lm_head.weight, std=0.001)
        for block in self.transformer.h:
            m = block.mixer
            if block.kind == "T":
                inputs, output = [m.c_q, m.c_k, m.c_v], m.c_proj
            else:
                inputs, output = ([m.in_proj, m.x_proj] if mamba1 else [m.in_proj]), m.out_proj
            for lin in inputs + [block.mlp.c_fc]:
                nn.init.normal_(lin.weight, std=lin.in_features ** -0.5)
            nn.init.zeros_(output.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, valid=None, cache=None, reduction="mean", weights=None):
        """idx: (B, T) token ids. targets: (B, T) with -1 where no loss is wanted (the loss
        mask). valid: (B, T) bool, False on left padding. cache: InferenceCache for generation.
        weights: (B, T) float, each target's weight in the mean loss (None: all 1).
        Returns logits (B, T, vocab) without targets, else the loss."""
        if weights is not None and reduction != "mean":  # they would be silently ignored
            raise ValueError(f"GPT.forward: weights apply to the mean loss only, not reduction={reduction!r}; "
                             "pass reduction='mean', or multiply the per-token losses by them yourself")
        B, T = idx.shape
        if cache is not None:
            cache.ensure(T)
            if valid is None:
                valid = torch.ones(B, T, dtype=torch.bool, device=idx.device)
            cache.valid[:, cache.length:cache.length + T] = valid
            positions = cache.positions(T)
            if cache.length > 0:
                valid = None  # only padding (in the prefill) needs masking in the Mamba inputs
        elif valid is not None:
            positions = (valid.long().cumsum(1) - 1).clamp(min=0)  # (B, T), 0 at the first real token
        else:
            positions = torch.arange(T, device=idx.device)[None].expand(B, T)
        cos_sin = rotary_cos_sin(positions, self.config.n_embd // self.config.n_head)  # cos, sin: (B, T, 1, hd/2)
        x = norm(self.transformer.wte(idx))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, cos_sin, valid, cache)  # (B, T, C) through every layer
        x = norm(x)
        if cache is not None:
            cache.length += T
        if targets is not None and reduction == "mean":
            # Fine-tuning trains on the answer only (a few % of positions): run the lm_head and
            # the softmax just there; over every document token they were a large share of a step.
            keep = targets.reshape(-1) != -1
            x, targets = x.reshape(-1, x.size(-1))[keep], targets.reshape(-1)[keep]  # (N, C), (N,)
            if weights is not None:
                weights = weights.reshape(-1)[keep]  # (N,)
        logits = self.lm_head(x).float()  # (B, T, V), or (N, V) for the N target positions
        c = self.config.softcap
        if c:
            logits = c * torch.tanh(logits / c)
        if targets is None:
            return logits
        if weights is not None and reduction == "mean":
            loss = F.cross_entropy(logits, targets, reduction="none")  # (N,)
            return (loss * weights).sum() / weights.sum().clamp(min=1e-8)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction="sum" if reduction == "mean" else reduction)  # (B*T,) for "none", else ()
        if reduction == "mean":  # a batch with no target tokens gives 0, not 0/0 = NaN
            loss = loss / (targets != -1).sum().clamp(min=1)
        return loss

    def setup_optimizers(self, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004, scalar_lr=0.004,
                         weight_decay=0.0, betas=(0.8, 0.95)):
        """Muon for the 2-D matrices inside blocks; AdamW for embeddings, the lm_head and the
        small Mamba vectors (A_log, D, dt biases, conv filters, norm weights), as nanochat
        splits them. Adam lrs are scaled by 1/sqrt(d_model/768) like nanochat."""
        from nanochat_core.model.muon import Muon
        matrix, other = [], []
        for name, p in self.transformer.h.named_parameters():
            (matrix if p.ndim == 2 and "conv1d" not in name else other).append(p)
        scale = (self.config.n_embd / 768) ** -0.5
        adam_groups = [
            {"params": list(self.transformer.wte.parameters()), "lr": embedding_lr * scale},
            {"params": list(self.lm_head.parameters()), "lr": unembedding_lr * scale},
            {"params": other, "lr": scalar_lr * scale},
        ]
        adam_groups = [g for g in adam_groups if g["params"]]
        # Every parameter in exactly one group: one left out would silently never train, one in
        # two groups (or in both AdamW and Muon, which torch does not notice) would step twice.
        groups = [g["params"] for g in adam_groups] + [matrix]
        names = {p: n for n, p in self.named_parameters()}
        seen = Counter(p for g in groups for p in g)
        dup = sorted(names.get(p, "<not a model parameter>") for p, k in seen.items() if k > 1)
        missing = sorted(n for p, n in names.items() if p not in seen)
        n_groups, n_model = sum(p.numel() for g in groups for p in g), sum(p.numel() for p in self.parameters())
        assert n_groups == n_model and not dup and not missing, (
            f"optimizer groups hold {n_groups:,} parameter elements but the model has {n_model:,}; "
            f"in more than one group: {dup}; in no group: {missing}")
        adamw = torch.optim.AdamW(adam_groups, betas=betas, eps=1e-10, weight_decay=weight_decay)
        opts = [adamw]
        if matrix:
            opts.append(Muon(matrix, lr=matrix_lr, momentum=0.95))
        for opt in opts:
            for g in opt.param_groups:
                g["initial_lr"] = g["lr"]
        return opts

    def estimate_flops_per_token(self):
        # 6N for the matmuls plus attention's 12 * layers * head_dim * T per T layer.
        n = self.num_params() - self.transformer.wte.weight.numel()
        t_layers = self.config.block_pattern.count("T")
        return 6 * n + 12 * t_layers * self.config.n_embd * self.config.sequence_len
