"""Atomic, verifiable checkpoints: weights, optimizer state, metadata and lineage.

A checkpoint directory holds step-numbered files:
    model_{step:06d}.pt   torch.save of the model state dict (tensors only)
    optim_{step:06d}.pt   optional optimizer state
    meta_{step:06d}.json  written LAST: format_version, step, sha256 of the files above, and
                          what the caller passes (config, tokenizer_hash, lineage, ...)
A step whose meta file is missing is an interrupted write and is ignored. Every file goes
through common.atomic_write_bytes, so a crash leaves the old file or the new one.

Loading checks the sha256 recorded in meta before unpickling, then uses
torch.load(weights_only=True): a checkpoint from an untrusted place cannot run code.
"""
import io
import json
import re
from pathlib import Path

import torch

from nanochat_core.common import atomic_write_bytes, read_bytes, sha256_bytes

FORMAT_VERSION = 1
_RESERVED = ("format_version", "step", "model_file", "model_sha256", "optim_file", "optim_sha256",
             "meta_sha256")
_META_RE = re.compile(r"^meta_(\d{6,})\.json$")
_FIX = ("delete the checkpoint directory and rerun the stage that writes it (e.g. `dvc repro <stage>`), "
        "or restore it from the DVC cache with `dvc checkout`")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt, unsafe, or doesn't match its tokenizer."""


def _paths(ckpt_dir, step):
    d = Path(ckpt_dir)
    return d / f"model_{step:06d}.pt", d / f"optim_{step:06d}.pt", d / f"meta_{step:06d}.json"


def _canonical(obj) -> bytes:
    # No trailing newline: any truncation of the file leaves invalid JSON.
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8")


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)  # a file object (not a path) gives byte-identical output for equal states
    return buf.getvalue()


def save_checkpoint(ckpt_dir, step: int, model_state: dict, meta: dict, optim_state=None, keep_last: int = 2):
    """Write model (and optimizer) state, then the meta JSON; then drop steps beyond keep_last.

    meta should carry `config` (model config dict), `tokenizer_hash` and `lineage` (parent
    checkpoint hash, MLflow run id, data hashes, git commit); it must be JSON-serializable.
    keep_last=None or 0 keeps every step. Returns the path of the meta file.
    """
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if not isinstance(model_state, dict) or not all(isinstance(k, str) for k in model_state):
        raise TypeError("model_state must be a dict with str keys (a state_dict)")
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    meta = {k: v for k, v in meta.items() if k not in _RESERVED}
    meta.setdefault("lineage", {})
    # fail on a non-JSON meta before anything is written
    try:
        _canonical(meta)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint meta must be JSON-serializable: {e}") from e

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    model_path, optim_path, meta_path = _paths(ckpt_dir, step)
    # Serialize everything first: if that fails (a bad object), nothing on disk has changed,
    # not even an existing checkpoint of this same step.
    model_bytes = _torch_bytes(model_state)
    optim_bytes = None if optim_state is None else _torch_bytes(optim_state)
    meta.update(format_version=FORMAT_VERSION, step=step, model_file=model_path.name,
                model_sha256=sha256_bytes(model_bytes), optim_file=optim_path.name if optim_bytes else None,
                optim_sha256=sha256_bytes(optim_bytes) if optim_bytes else None)
    meta["meta_sha256"] = sha256_bytes(_canonical(meta))
    # Overwriting a step: it is incomplete (ignored) from here until the new meta lands.
    meta_path.unlink(missing_ok=True)
    atomic_write_bytes(model_path, model_bytes)
    if optim_bytes is None:
        optim_path.unlink(missing_ok=True)  # stale optimizer state of an earlier write of this step
    else:
        atomic_write_bytes(optim_path, optim_bytes)
    atomic_write_bytes(meta_path, _canonical(meta))  # last: marks the step complete

    if keep_last:
        older = [s for s in _complete_steps(ckpt_dir) if s < step]
        drop = older[:max(0, len(older) - (keep_last - 1))]
        # files of interrupted writes (no meta) from before this step are garbage too
        drop += [s for s in _all_steps(ckpt_dir) if s < step and s not in older]
        for s in sorted(set(drop)):
            _remove_step(ckpt_dir, s)
    return meta_path


def _complete_steps(ckpt_dir):
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _META_RE.match(p.name)))


def _all_steps(ckpt_dir):
    pat = re.compile(r"^(?:model|optim|meta)_(\d{6,})\.(?:pt|json)$")
    return sorted({int(m.group(1)) for p in Path(ckpt_dir).iterdir() if (m := pat.match(p.name))})


def clear_checkpoints(ckpt_dir):
    """Remove every step checkpoint in ckpt_dir (meta files first, so a crash midway leaves
    only incomplete steps, which latest_step ignores). Other files are left alone."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return
    steps = _all_steps(d)
    for s in steps:
        _paths(d, s)[2].unlink(missing_ok=True)
    for s in steps:
        _remove_step(d, s)


def _remove_step(ckpt_dir, step):
    for p in reversed(_paths(ckpt_dir, step)):  # meta first: a crash leaves an ignored, incomplete step
        p.unlink(missing_ok=True)


def latest_step(ckpt_dir):
    """The newest step with a meta file (a complete write), or None."""
    steps = _complete_steps(ckpt_dir)
    return steps[-1] if steps else None


def _resolve_step(ckpt_dir, step):
    if step is not None:
        return step
    step = latest_step(ckpt_dir)
    if step is None:
        where = ("does not exist" if not Path(ckpt_dir).is_dir()
                 else "holds no complete checkpoint (no meta_*.json)")
        raise CheckpointError(f"checkpoint directory {ckpt_dir} {where}; run the stage that trains it "
                              f"(e.g. `dvc repro`) or restore it with `dvc checkout`")
    return step


def load_meta(ckpt_dir, step=None) -> dict:
    """Read and verify a step's meta JSON (the latest complete step if step is None)."""
    step = _resolve_step(ckpt_dir, step)
    meta_path = _paths(ckpt_dir, step)[2]
    data = read_bytes(meta_path, CheckpointError, "checkpoint meta", f"does not exist (step {step} was never "
                      f"completely written; complete steps: {_complete_steps(ckpt_dir)})", _FIX)
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint meta {meta_path} is corrupt or truncated (not valid JSON: {e}); "
                              f"{_FIX}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint meta {meta_path} is not a JSON object; {_FIX}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint meta {meta_path} has format_version "
                              f"{meta.get('format_version')!r}; this code reads version {FORMAT_VERSION}; "
                              f"{_FIX}")
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    if meta.get("meta_sha256") != sha256_bytes(_canonical(body)):
        raise CheckpointError(f"checkpoint meta {meta_path} was modified or corrupted (its meta_sha256 "
                              f"does not match its content); {_FIX}")
    if meta.get("step") != step:
        raise CheckpointError(f"checkpoint meta {meta_path} says step {meta.get('step')!r}; {_FIX}")
    return meta


def _reason(e) -> str:
    # torch's message is long and suggests weights_only=False; keep only the actual cause.
    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", msg, re.DOTALL)
    msg = (m.group(1) if m else msg).strip()
    return " ".join(msg.split())[:300] or type(e).__name__


def _load_file(path, expected_sha, map_location):
    data = read_bytes(path, CheckpointError, "checkpoint file", "is missing although its meta file exists", _FIX)
    # Hash the exact bytes we unpickle; a truncated or altered file stops here.
    digest = sha256_bytes(data)
    if digest != expected_sha:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: sha256 {digest[:16]}... "
                              f"does not match {str(expected_sha)[:16]}... recorded in its meta file "
                              f"({len(data)} bytes); {_FIX}")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:
        # weights_only refuses anything but tensors and plain containers: this is where a
        # pickle that would run code ends up.
        raise CheckpointError(f"checkpoint file {path} was refused: it is not a plain tensor checkpoint "
                              f"loadable with weights_only=True ({type(e).__name__}: {_reason(e)}). "
                              f"Don't load files from untrusted sources; {_FIX}") from None


def load_checkpoint(ckpt_dir, step=None, map_location="cpu", load_optim: bool = False):
    """Returns (model_state, meta, optim_state or None). step=None: the latest complete step."""
    meta = load_meta(ckpt_dir, step)
    model_path, optim_path, _ = _paths(ckpt_dir, meta["step"])
    model_state = _load_file(model_path, meta.get("model_sha256"), map_location)
    if not isinstance(model_state, dict):
        raise CheckpointError(f"checkpoint file {model_path} holds a {type(model_state).__name__}, "
                              f"not a state dict; {_FIX}")
    optim_state = None
    if load_optim:
        if not meta.get("optim_sha256"):
            raise CheckpointError(f"checkpoint {ckpt_dir} step {meta['step']} has no optimizer state "
                                  f"(it was saved without one); load with load_optim=False")
        optim_state = _load_file(optim_path, meta["optim_sha256"], map_location)
    return model_state, meta, optim_state


def checkpoint_hash(ckpt_dir, step=None) -> str:
    """sha256 of the model weights file (from the verified meta): the checkpoint's identity in lineage."""
    return load_meta(ckpt_dir, step)["model_sha256"]


def check_tokenizer(meta: dict, tokenizer):
    """Refuse a tokenizer other than the one the checkpoint was trained with."""
    have = tokenizer if isinstance(tokenizer, str) else tokenizer.hash
    want = meta.get("tokenizer_hash")
    where = f"step {meta.get('step')}" + (f" ({meta['model_file']})" if meta.get("model_file") else "")
    if not want:
        raise CheckpointError(f"checkpoint {where} records no tokenizer_hash, so its tokenizer cannot be "
                              f"verified; retrain it with the current pipeline (`dvc repro`)")
    if want != have:
        raise CheckpointError(f"checkpoint {where} was trained with tokenizer {want[:12]}, but the "
                              f"tokenizer given has hash {have[:12]}; use the tokenizer the checkpoint was "
                              f"trained with (`dvc checkout`), or retrain from pretrain (`dvc repro`) so "
                              f"they match")


def load_model(ckpt_dir, tokenizer, device="cpu"):
    """(GPT with the checkpoint's weights on `device`, meta); refuses another tokenizer."""
    from nanochat_core.model import GPT, GPTConfig
    if latest_step(ckpt_dir) is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}; run the stage that trains it first (`dvc repro`)")
    state, meta, _ = load_checkpoint(ckpt_dir, map_location=device)
    check_tokenizer(meta, tokenizer)
    model = GPT(GPTConfig.from_dict(meta["config"]))
    model.load_state_dict(state)
    return model.to(device), meta
