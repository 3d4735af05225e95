"""Causal self-attention, nanochat-style: RoPE, QK-norm, GQA, no biases.

Positions are per row so a left-padded batch (prompts of different lengths) sees the same
rotary phases as each prompt alone; padded keys are masked out.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def norm(x):
    # Parameter-free RMSNorm.
    return F.rms_norm(x, (x.size(-1),))


def rotary_cos_sin(positions, head_dim, base=10000.0):
    """cos/sin of shape (B, T, 1, head_dim/2) for integer positions (B, T)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # (B, T, hd/2)
    return freqs.cos()[:, :, None, :], freqs.sin()[:, :, None, :]


def apply_rotary(x, cos, sin):
    # x: (B, T, H, hd). Rotate pairs made of the two halves, as nanochat does.
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos_sin, valid=None, cache=None):
        """x: (B, T, C). valid: (B, T) bool, False on left padding. cache: this layer's dict
        {"k", "v"} preallocated (B, Hkv, Tmax, hd) plus the shared "len" and "valid" of the
        InferenceCache (see cache.py)."""
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)  # (B, T, H, hd)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)  # k, v: (B, T, Hkv, hd)
        cos, sin = cos_sin
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = norm(q), norm(k)  # QK-norm keeps attention logits bounded
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # q (B, H, T, hd); k, v (B, Hkv, T, hd)

        if cache is None:
            if valid is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_head != self.n_kv_head)
            else:
                mask = _causal_mask(valid, valid, 0)  # (B, 1, T, T)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_head != self.n_kv_head)
        else:
            start = cache.length
            layer = cache.layers[self.layer_idx]
            layer["k"][:, :, start:start + T] = k
            layer["v"][:, :, start:start + T] = v
            K, V = layer["k"][:, :, :start + T], layer["v"][:, :, :start + T]  # (B, Hkv, start+T, hd)
            key_valid = cache.valid[:, :start + T]
            mask = _causal_mask(key_valid[:, start:start + T], key_valid, start)  # (B, 1, T, start+T)
            y = F.scaled_dot_product_attention(q, K, V, attn_mask=mask, enable_gqa=self.n_head != self.n_kv_head)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, H, T, hd) -> (B, T, C), heads side by side
        return self.c_proj(y)  # (B, T, C)


def _causal_mask(q_valid, k_valid, q_offset):
    """Boolean (B, 1, Tq, Tk) mask: causal, keys must be valid. Every query may always see
    itself, so padded rows never have an all-masked softmax (which would give NaN and leak
    into real rows through 0 * NaN)."""
    Tq, Tk = q_valid.shape[1], k_valid.shape[1]
    qi = torch.arange(Tq, device=k_valid.device)[:, None] + q_offset
    ki = torch.arange(Tk, device=k_valid.device)[None, :]
    causal = ki <= qi
    mask = causal[None] & k_valid[:, None, :]
    mask = mask | (ki == qi)[None]
    return mask[:, None]
