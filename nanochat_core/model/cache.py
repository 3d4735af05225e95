"""Inference cache: one entry per layer. Attention layers keep preallocated K/V buffers;
Mamba layers keep (conv_state, ssm_state), whose size does not grow with the context.

Batches are left-padded: `valid` marks real tokens, and `offset` (pads per row) shifts each
row's rotary positions so row b's first real token sits at position 0.
"""
import torch


class InferenceCache:
    def __init__(self, model, batch_size, max_len, device=None, dtype=None):
        p = next(model.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        cfg = model.config
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0  # positions filled (same for every row: padding is on the left)
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.offset = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.layers = []
        head_dim = cfg.n_embd // cfg.n_head
        for kind, block in zip(cfg.block_pattern, model.transformer.h):
            if kind == "T":
                shape = (batch_size, cfg.n_kv_head, max_len, head_dim)
                self.layers.append({"k": torch.zeros(shape, device=device, dtype=dtype),
                                    "v": torch.zeros(shape, device=device, dtype=dtype)})
            else:
                self.layers.append(block.mixer.new_state(batch_size, device, dtype))

    def positions(self, T):
        """Rotary positions (B, T) for the next T tokens."""
        base = torch.arange(self.length, self.length + T, device=self.valid.device)
        return (base[None, :] - self.offset[:, None]).clamp(min=0)

    def ensure(self, n):
        """Room for n more positions: attention buffers grow (doubling) when a forced tool
        output makes the sequence longer than planned. Mamba states never grow."""
        need = self.length + n
        if need <= self.max_len:
            return
        new = max(need, 2 * self.max_len)
        pad = new - self.max_len
        self.valid = torch.cat([self.valid, self.valid.new_zeros(self.batch_size, pad)], dim=1)
        for layer in self.layers:
            if "k" in layer:
                for key in ("k", "v"):
                    t = layer[key]
                    layer[key] = torch.cat([t, t.new_zeros(t.shape[0], t.shape[1], pad, t.shape[3])], dim=2)
        self.max_len = new

    def reorder(self, index):
        """Keep rows `index` (e.g. to fan a prompt out into samples)."""
        self.valid, self.offset = self.valid[index], self.offset[index]
        self.layers = [{k: v[index] for k, v in layer.items()} for layer in self.layers]
        self.batch_size = len(index)
