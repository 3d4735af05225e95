"""One training loop for every stage (pretrain, midtrain, RAG and REFRAG fine-tuning).

Batches are a pure function of (seed, step, micro-step, rank), so a run resumed from a
checkpoint sees exactly the batches the uninterrupted run would have seen, and with the
optimizer state restored it reaches the same weights. Under `torchrun` the model is wrapped
in DDP and each rank draws its own micro-batches.
"""
import contextlib
import math
import time

import torch
import torch.distributed as dist

from nanochat_core.checkpoint import clear_checkpoints, latest_step, load_checkpoint, save_checkpoint
from nanochat_core.common import print0


def lr_multiplier(step, total, warmup_frac, warmdown_frac):
    """Linear warmup, flat, then linear warmdown to 0.1 (nanochat's schedule)."""
    warmup = int(round(warmup_frac * total))
    warmdown = int(round(warmdown_frac * total))
    if warmup and step < warmup:
        return (step + 1) / warmup
    if warmdown and step >= total - warmdown:
        frac = (total - step) / warmdown
        return frac + (1 - frac) * 0.1
    return 1.0


def setup_distributed():
    """(rank, world_size, device). Initializes the process group when run under torchrun
    (torch reads torchrun's environment itself)."""
    if dist.is_torchelastic_launched() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available():
        local = dist.get_node_local_rank(fallback_rank=0)
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


def resolve_device(name):
    """params' device (auto | cpu | cuda | mps) -> a torch device string, said once in the log.
    auto is cuda when there is a GPU, else cpu. Under torchrun each rank takes its local GPU."""
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if name in (None, "auto") else name
    if dev == "cuda" and dist.is_initialized():
        dev = f"cuda:{dist.get_node_local_rank(fallback_rank=0)}"
    if _said.get(name) != dev:
        _said[name] = dev
        print0(f"device: {name} -> {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.startswith("cuda") else
                                             f" ({torch.get_num_threads()} threads)" if dev == "cpu" else ""))
    return dev


_said = {}


class TokenStream:
    """Pretraining batches: random windows of a long token tensor, seeded per step; (x, y, None):
    every target weighs 1."""

    def __init__(self, tokens, seq_len):
        self.tokens = torch.as_tensor(tokens, dtype=torch.long)
        self.seq_len = seq_len
        if len(self.tokens) <= seq_len + 1:
            raise ValueError(f"the corpus has {len(self.tokens)} tokens, fewer than one sequence of "
                             f"{seq_len + 1}; add text to the corpus or lower model.sequence_len")

    def __call__(self, seed, step, micro, batch_size):
        g = torch.Generator().manual_seed(_batch_seed(seed, step, micro))
        starts = torch.randint(0, len(self.tokens) - self.seq_len - 1, (batch_size,), generator=g)
        window = torch.stack([self.tokens[s:s + self.seq_len + 1] for s in starts.tolist()])
        return window[:, :-1], window[:, 1:], None


class ConversationBatches:
    """Fine-tuning batches from rendered conversations [(ids, mask)]: loss only where mask is
    > 0 (the assistant's own tokens at 1, a weighted documents block at its loss_weight),
    right-padded to the longest row in the batch.

    A batch is a run of neighbours in length order (circular, from a random start), so it
    pads to about its rows' own length: drawn at random, a mix of short drills and
    3-document conversations padded most rows to 2-3x their length. On the circle every row
    sits in exactly batch_size runs, so each is drawn equally often, as before."""

    def __init__(self, rendered, max_len, pad_id=0):
        if not rendered:
            raise ValueError("no training conversations were rendered; check the QA files and the stage params")
        self.rows = [(ids[:max_len + 1], mask[:max_len + 1]) for ids, mask in rendered]
        self.pad_id = pad_id
        self.pad_to = None  # a fixed batch length (max_len) for torch.compile; else each batch's longest row
        # Ties in length broken at random (fixed seed), so a run of equal lengths mixes sources.
        tie = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(0)).tolist()
        self.order = sorted(range(len(self.rows)), key=lambda i: (len(self.rows[i][0]), tie[i]))

    def __call__(self, seed, step, micro, batch_size):
        g = torch.Generator().manual_seed(_batch_seed(seed, step, micro))
        start = int(torch.randint(0, len(self.rows), (1,), generator=g))
        return self._batch([self.order[(start + j) % len(self.rows)] for j in range(batch_size)])

    def every_row(self, batch_size):
        """Each row exactly once, in length order (for held-out loss)."""
        for i in range(0, len(self.order), batch_size):
            yield self._batch(self.order[i:i + batch_size])

    def _batch(self, pick):
        return pad_batch([self.rows[i] for i in pick], self.pad_id, self.pad_to)


def pad_batch(rows, pad_id, length=None):
    """[(ids, mask)] -> (x, y, w): inputs ids[:-1] right-padded with pad_id, targets ids[1:] with
    -1 wherever the target's mask is 0 (no loss there) and in the padding. A mask of 0/1 only
    gives w None (every target counts once); fractional mask values (a documents block with a
    loss_weight) give w, each target's weight in the loss. Right padding is safe for causal
    layers: nothing after a real token reaches it."""
    T = max(len(ids) for ids, _ in rows) - 1 if length is None else length
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), -1, dtype=torch.long)
    w = torch.zeros((len(rows), T))
    for r, (ids, mask) in enumerate(rows):
        ids_t = torch.tensor(ids, dtype=torch.long)
        m = torch.tensor(mask[1:], dtype=torch.float32)
        n = len(ids) - 1
        x[r, :n] = ids_t[:-1]
        y[r, :n] = torch.where(m > 0, ids_t[1:], torch.full_like(ids_t[1:], -1))
        w[r, :n] = m
    return x, y, (None if ((w == 0) | (w == 1)).all() else w)


def _batch_seed(seed, step, micro):
    return (seed * 1_000_003 + step * 1009 + micro) % (2**63 - 1)


@torch.no_grad()
def evaluate_loss(model, batches, batch_size):
    """Mean loss per target token over every row of `batches` (a ConversationBatches)."""
    model.eval()
    device = next(model.parameters()).device
    nats, n = 0.0, 0
    for x, y, w in batches.every_row(batch_size):
        x, y = x.to(device), y.to(device)
        w = None if w is None else w.to(device)
        count = float((y != -1).sum() if w is None else w.sum())  # weighted as in training
        nats += model(x, y, weights=w).item() * count
        n += count
    model.train()
    return nats / max(n, 1)


@torch.no_grad()
def evaluate_bpb(model, tokens, token_bytes, seq_len, batch_size=8, max_batches=8):
    """Bits per byte on held-out tokens: tokenizer-independent, so models with different
    vocabularies compare. token_bytes[i] is the UTF-8 length of token i (0 for specials)."""
    model.eval()
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    n_seq = min((len(tokens) - 1) // seq_len, batch_size * max_batches)
    if n_seq == 0:
        raise ValueError("validation split is shorter than one sequence; lower model.sequence_len")
    device = next(model.parameters()).device
    nats, nbytes = 0.0, 0
    for i in range(0, n_seq, batch_size):
        rows = range(i, min(i + batch_size, n_seq))
        x = torch.stack([tokens[r * seq_len:(r + 1) * seq_len] for r in rows]).to(device)
        y = torch.stack([tokens[r * seq_len + 1:(r + 1) * seq_len + 1] for r in rows]).to(device)
        loss = model(x, y, reduction="none")
        b = token_bytes.to(device)[y.reshape(-1)]
        nats += (loss * (b > 0)).sum().item()
        nbytes += b.sum().item()
    model.train()
    return nats / (math.log(2) * max(nbytes, 1))


def _fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def train(model, get_batch, cfg, ckpt_dir, meta, log=None, eval_fn=None, device="cpu", name="train"):
    """Train `model` for cfg["steps"] optimizer steps, checkpointing to ckpt_dir.

    cfg: a training section of params.yaml (seed, steps, batch_size, grad_accum, the four
    learning rates, weight_decay, warmup_frac, warmdown_frac, eval_every, checkpoint_every,
    keep_last, log_every); every key is required, its default lives in params.py alone.
    get_batch(seed, step, micro, batch_size) -> (x, y, w), y = -1 where there is no loss, w None
    or each target's weight in the loss (pad_batch).
    meta: dict saved with every checkpoint (config, tokenizer_hash, lineage, resume_key).
    log(metrics: dict, step: int): progress callback (the flow sends it to MLflow).
    eval_fn(model) -> dict of metrics, run every eval_every steps and at the end.
    Resumes from the latest checkpoint in ckpt_dir if there is one. The loss history rides in
    every checkpoint, so a resumed or already-complete run reports the whole run.
    Returns a summary dict (final_loss, steps, tokens, seconds, resumed_from, history)."""
    rank, world, local_device = setup_distributed()
    device = torch.device(device)
    if world > 1 and device.type == "cuda":  # each rank trains on its own GPU
        device = local_device
    log = log or (lambda metrics, step: None)
    meta = {**meta, "world_size": world}
    total = cfg["steps"]
    model.to(device)
    opts = model.setup_optimizers(cfg["matrix_lr"], cfg["embedding_lr"], cfg["unembedding_lr"], cfg["scalar_lr"],
                                  cfg["weight_decay"])
    start, resumed_from, history = 0, None, []
    last = latest_step(ckpt_dir)
    if last is not None:
        state, old_meta, optim_state = load_checkpoint(ckpt_dir, last, map_location=device, load_optim=True)
        if (old_meta.get("config") != meta.get("config") or old_meta.get("resume_key") != meta.get("resume_key")
                or old_meta.get("world_size", 1) != world):
            # Other params, parent or code, or another number of ranks (each draws its own
            # batches): under DVC this is an ordinary rerun, not a resume.
            if rank == 0:
                print0(f"[{name}] {ckpt_dir} holds step {last} of a different run (params, parent or code changed); "
                       "starting from step 0")
                clear_checkpoints(ckpt_dir)
            last = None
    if world > 1:  # every rank has read (and rank 0 maybe cleared) ckpt_dir before anyone writes to it
        dist.barrier()
    if last is not None:
        model.load_state_dict(state)
        if optim_state is not None:
            for i, o in enumerate(opts):
                o.load_state_dict(optim_state[f"opt{i}"])
        start, resumed_from = last, last
        history = [h for h in old_meta.get("history", []) if h["step"] <= last]
        print0(f"[{name}] resuming from {ckpt_dir} step {last}")
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["compile"]:  # fixed shapes (fine-tuning batches are padded to max_len), so it compiles once
        ddp_model = torch.compile(ddp_model, dynamic=False)
    amp = cfg["precision"] == "bf16" or (cfg["precision"] == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    print0(f"[{name}] {device}, {'bf16 autocast (fp32 weights and SSM scans)' if amp else 'fp32'}"
           f"{', torch.compile' if cfg['compile'] else ''}, {world} rank(s)")

    def checkpoint(step):
        if rank == 0:  # the weights and optimizer states are the same on every rank
            optim_state = {f"opt{i}": o.state_dict() for i, o in enumerate(opts)}
            save_checkpoint(ckpt_dir, step, model.state_dict(), {**meta, "step": step, "history": history}, optim_state,
                            keep_last=cfg["keep_last"])
        if world > 1:  # no rank runs ahead of a checkpoint that is still being written
            dist.barrier()

    t0 = time.time()
    tokens_seen = 0
    smooth = None
    model.train()
    for step in range(start, total):
        mult = lr_multiplier(step, total, cfg["warmup_frac"], cfg["warmdown_frac"])
        for o in opts:
            for g in o.param_groups:
                g["lr"] = g["initial_lr"] * mult
        loss_sum = 0.0
        for micro in range(cfg["grad_accum"]):
            x, y, w = get_batch(cfg["seed"], step, micro * world + rank, cfg["batch_size"])
            x, y = x.to(device), y.to(device)
            w = None if w is None else w.to(device)
            with autocast():
                loss = ddp_model(x, y, weights=w) / cfg["grad_accum"]
            loss.backward()
            loss_sum += loss.item()
            tokens_seen += x.numel() * world
        if world > 1:  # every rank reports the mean over all ranks' micro-batches, as one process would
            t = torch.tensor([loss_sum], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            loss_sum = float(t) / world
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)
        smooth = loss_sum if smooth is None else 0.9 * smooth + 0.1 * loss_sum
        done = step + 1
        record = {"loss": loss_sum, "lr_mult": mult}
        if done % cfg["log_every"] == 0 or done == total:
            elapsed = time.time() - t0
            tps = tokens_seen / max(elapsed, 1e-9)
            eta = elapsed / (done - start) * (total - done)
            record["tokens_per_s"] = tps
            print0(f"[{name}] step {done}/{total} | loss {loss_sum:.4f} (avg {smooth:.4f}) | lr x{mult:.2f} | "
                   f"{tps:,.0f} tok/s | ETA {_fmt_time(eta)}")
        if eval_fn is not None and ((cfg["eval_every"] and done % cfg["eval_every"] == 0) or done == total):
            record.update(eval_fn(model))
        if rank == 0:
            log(record, done)
        history.append({"step": done, **record})
        if (cfg["checkpoint_every"] and done % cfg["checkpoint_every"] == 0) or done == total:
            checkpoint(done)
    if start == total:
        print0(f"[{name}] already trained to step {total} in {ckpt_dir}")
    final_loss = history[-1]["loss"] if history else float("nan")
    return {"final_loss": final_loss, "steps": total, "tokens": tokens_seen, "seconds": time.time() - t0,
            "resumed_from": resumed_from, "world_size": world, "history": history}
