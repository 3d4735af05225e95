"""params.yaml: loading, validation, and presets.

    params = load_params("params.yaml")   # validated plain dict, or a ValueError naming the key

DEFAULTS is the schema and equals params.yaml key for key: a key's type is its default's type,
its bounds are in _RULES. params.yaml must spell out every key (no hidden defaults), so the
values DVC tracks are exactly the values the stages use. The `documents` section belongs to
nanochat_core.data.prepare and is validated there.

Presets (presets/<name>.yaml, nanochat_core/presets.py) are partial overrides of this file.
"""
import copy
from pathlib import Path

import yaml

from nanochat_core.common import closest
from nanochat_core.data.prepare import DEFAULTS as DOCUMENTS_DEFAULTS
from nanochat_core.data.prepare import QA_TYPES
from nanochat_core.data.prepare import validate_params as validate_documents_params
from nanochat_core.tokenizer import SPECIAL_TOKENS

KB_RETRIEVERS = ("tfidf", "bm25", "dense")        # what a KB can index (retrieval.kb.ALL_RETRIEVERS)
RETRIEVERS = KB_RETRIEVERS + ("hybrid",)          # what a stage can query (hybrid fuses at query time)
BM25_METHODS = ("robertson", "atire", "bm25l", "bm25+", "lucene")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")              # auto: bf16 autocast on CUDA, fp32 elsewhere
MODES = ("closed_book", "rag", "refrag")
CHECKPOINTS = ("base", "mid", "rag", "refrag_sft", "refrag")

# The schema: each key's default (its type is the default's type) is written here once, and
# equals params.yaml (tests/test_params.py compares them key for key). _RULES below holds each
# key's bounds. Training keys shared by the four training sections, then each section's own.
TRAINING = {
    "seed": 0, "steps": 200, "batch_size": 16, "grad_accum": 1,
    "matrix_lr": 0.02, "embedding_lr": 0.2, "unembedding_lr": 0.004, "scalar_lr": 0.004,
    "weight_decay": 0.0, "warmup_frac": 0.0, "warmdown_frac": 0.3,
    "eval_every": 50, "eval_tokens": 8192, "checkpoint_every": 100, "keep_last": 2, "log_every": 25,
    "device": "auto", "precision": "auto", "compile": False,
}
# The fine-tuning stages move a pretrained model: a quarter of pretraining's rates. At pretraining's
# rates the fine-tuned model swung with seed and float rounding (val single-hop RAG EM 0.26-0.42);
# at a quarter 0.82-0.86 (docs/history.md, "Fine-tuning at a quarter of pretrain's learning rates").
FINETUNE_LRS = {"matrix_lr": 0.005, "embedding_lr": 0.05, "unembedding_lr": 0.001, "scalar_lr": 0.001}

DEFAULTS = {
    "documents": copy.deepcopy(DOCUMENTS_DEFAULTS),
    "kb": {
        "retrievers": ["bm25"],
        "bm25": {"k1": 1.2, "b": 0.75, "method": "lucene"},
        "dense": {"model": "all-MiniLM-L6-v2", "index": "flat"},
        "chunking": {"enabled": False, "max_words": 200, "overlap": 50},
    },
    "tokenizer": {"vocab_size": 2048, "max_chars": 2_000_000},
    "model": {
        "sequence_len": 256, "vocab_size": 2048, "n_layer": 4, "n_embd": 128, "n_head": 4, "n_kv_head": 4,
        "block_pattern": "TMTM", "mlp_ratio": 4, "softcap": 15.0, "ssm": "mamba2", "d_state": 16, "d_conv": 4,
        "expand": 2, "dt_rank": "auto", "headdim": 32, "ngroups": 1, "chunk_size": 64,
    },
    "pretrain": {**TRAINING, "seed": 42, "steps": 600, "batch_size": 8, "eval_every": 200, "eval_tokens": 16384},
    "midtrain": {**TRAINING, **FINETUNE_LRS, "seed": 43, "steps": 600, "eval_every": 100, "max_len": 640,
                 "closed_book_frac": 0.3, "reading_frac": 0.7, "n_distractors": 2, "swap_frac": 0.5, "drills": 12000, "drill_questions": 1,
                 "drill_docs": 1, "drill_people": 3000, "drill_doc_loss": 0.02},
    "rag_finetune": {**TRAINING, **FINETUNE_LRS, "seed": 44, "steps": 1000, "eval_every": 100, "max_len": 640, "k": 3, "k_min": 0,
                     "retriever": "bm25", "abstain_frac": 0.1, "swap_frac": 0.5, "question_types": ["single", "unanswerable"],
                     "drills": 6000, "drill_people": 3000, "drill_doc_loss": 0.02},
    "refrag_finetune": {
        **TRAINING, **FINETUNE_LRS, "seed": 45, "steps": 700, "batch_size": 8, "eval_every": 100, "max_len": 1024, "max_hops": 3,
        "k": 3, "retriever": "bm25", "question_types": ["2hop", "3hop", "single", "unanswerable"], "rag_mix": 0.3, "drills": 2500,
        "drill_people": 3000, "drill_doc_loss": 0.02, "holdout_frac": 0.0,
        "rl_steps": 20, "rl_seed": 45, "rl_group_size": 8, "rl_questions_per_step": 4, "rl_temperature": 1.0, "rl_lr_frac": 0.2,
        "rl_eval_every": 20, "rl_max_new_tokens": 24, "rl_question_types": ["2hop", "3hop", "single", "unanswerable"],
        "rl_drill_frac": 0.0, "rl_swap_frac": 0.0, "rl_reward_citation": 0.2, "rl_penalty_unsupported": 0.3, "rl_penalty_wrong": 0.0,
        "rl_penalty_format": 0.5, "rl_reward_retrieval": 0.0, "rl_copy_guard": True, "rl_ema": 0.0,
        "rl_rows_per_pass": 8, "rl_balance_relations": False, "rl_hop1_frac": 0.0,
    },
    "evaluate": {
        "seed": 0, "max_questions_per_type": 0, "k": 3, "max_hops": 3, "max_new_tokens": 24, "batch_size": 40,
        "retriever": "bm25", "modes": list(MODES), "checkpoints": list(CHECKPOINTS), "device": "auto", "copy_guard": True,
    },
    "distributed": {"nproc_per_node": 1, "nnodes": 1, "node_rank": 0, "master_addr": "127.0.0.1", "master_port": 29500},
    "tracking": {"experiment": "nanochat-rag", "tracking_uri": "sqlite:///mlflow.db", "register_models": True,
                 "log_model_weights": False},
}
TRAINING_SECTIONS = ("pretrain", "midtrain", "rag_finetune", "refrag_finetune")


# Impossible values. Key patterns use `*` for "any training section"; each rule is
# (check, what the value must be).
def _ge(n):
    return (lambda v: v >= n), f">= {n}"


def _SUBSET(choices):
    return ((lambda v: bool(v) and set(v) <= set(choices) and len(set(v)) == len(v)),
            f"a non-empty list without repeats from {list(choices)}")


def _ONE_OF(choices):
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


_KB_SUBSET = _SUBSET(KB_RETRIEVERS)
_POSITIVE = ((lambda v: v > 0), "> 0")
_FRACTION = ((lambda v: 0 <= v <= 1), "a fraction in [0, 1]")
_RULES = {
    "*.seed": _ge(0), "*.steps": _ge(0), "*.batch_size": _ge(1), "*.grad_accum": _ge(1),
    "*.matrix_lr": _POSITIVE, "*.embedding_lr": _POSITIVE, "*.unembedding_lr": _POSITIVE, "*.scalar_lr": _POSITIVE,
    "*.weight_decay": _ge(0), "*.warmup_frac": _FRACTION, "*.warmdown_frac": _FRACTION,
    "*.eval_every": _ge(0), "*.eval_tokens": _ge(0), "*.checkpoint_every": _ge(0), "*.keep_last": _ge(0),
    "*.log_every": _ge(1), "*.device": _ONE_OF(DEVICES), "*.precision": _ONE_OF(PRECISIONS),
    "midtrain.closed_book_frac": _FRACTION, "midtrain.reading_frac": _FRACTION, "midtrain.n_distractors": _ge(0),
    "rag_finetune.question_types": _SUBSET(QA_TYPES), "refrag_finetune.question_types": _SUBSET(QA_TYPES),
    "refrag_finetune.rag_mix": _FRACTION, "evaluate.seed": _ge(0), "evaluate.batch_size": _ge(1),
    "evaluate.device": _ONE_OF(DEVICES),
    "rag_finetune.k": _ge(1), "rag_finetune.k_min": _ge(0), "rag_finetune.abstain_frac": _FRACTION,
    "midtrain.swap_frac": _FRACTION, "rag_finetune.swap_frac": _FRACTION,
    **{f"{s}.{k}": r for s in ("midtrain", "rag_finetune", "refrag_finetune")
       for k, r in (("drills", _ge(0)), ("drill_people", _ge(10)), ("drill_doc_loss", _FRACTION))},
    "midtrain.drill_questions": _ge(1), "midtrain.drill_docs": _ge(1),
    "midtrain.max_len": _ge(16), "rag_finetune.max_len": _ge(16), "refrag_finetune.max_len": _ge(16),
    "refrag_finetune.k": _ge(1), "refrag_finetune.max_hops": _ge(1),
    "rag_finetune.retriever": _ONE_OF(RETRIEVERS),
    "refrag_finetune.retriever": _ONE_OF(RETRIEVERS),
    "refrag_finetune.rl_steps": _ge(0), "refrag_finetune.rl_seed": _ge(0), "refrag_finetune.rl_group_size": _ge(2),
    "refrag_finetune.rl_questions_per_step": _ge(1), "refrag_finetune.rl_temperature": _ge(0),
    "refrag_finetune.rl_lr_frac": _ge(0), "refrag_finetune.rl_eval_every": _ge(1),
    "refrag_finetune.rl_max_new_tokens": _ge(1), "refrag_finetune.rl_question_types": _SUBSET(QA_TYPES),
    "refrag_finetune.rl_drill_frac": _FRACTION, "refrag_finetune.rl_swap_frac": _FRACTION,
    "refrag_finetune.rl_hop1_frac": _FRACTION,
    "refrag_finetune.holdout_frac": _FRACTION,
    "refrag_finetune.rl_reward_citation": _ge(0), "refrag_finetune.rl_penalty_unsupported": _ge(0),
    "refrag_finetune.rl_penalty_wrong": _ge(0),
    "refrag_finetune.rl_ema": ((lambda v: 0 <= v < 1), "in [0, 1): at 1 the average never leaves the warm-up"),
    "refrag_finetune.rl_rows_per_pass": _ge(1),
    "refrag_finetune.rl_penalty_format": _ge(0), "refrag_finetune.rl_reward_retrieval": _ge(0),
    "evaluate.retriever": _ONE_OF(RETRIEVERS),
    "evaluate.max_questions_per_type": _ge(0), "evaluate.k": _ge(1), "evaluate.max_hops": _ge(1),
    "evaluate.max_new_tokens": _ge(1),
    "evaluate.modes": _SUBSET(MODES),
    "evaluate.checkpoints": _SUBSET(CHECKPOINTS),
    "kb.retrievers": (_KB_SUBSET[0], _KB_SUBSET[1] + " (hybrid fuses them at query time; "
                      "it is not built)"),
    "kb.bm25.k1": _ge(0), "kb.bm25.b": _FRACTION,
    "kb.bm25.method": _ONE_OF(BM25_METHODS),
    "kb.dense.model": ((lambda v: bool(v)), "a sentence-transformers model name or local directory"),
    "kb.dense.index": _ONE_OF(("flat", "hnsw", "ivf")),
    "kb.chunking.max_words": _ge(1), "kb.chunking.overlap": _ge(0),
    "tokenizer.vocab_size": _ge(256 + len(SPECIAL_TOKENS)), "tokenizer.max_chars": _ge(1),
    **{f"model.{k}": _ge(1) for k in ("sequence_len", "vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head",
                                      "mlp_ratio", "d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size")},
    "model.softcap": _ge(0),
    "model.dt_rank": ((lambda v: v == "auto" or (isinstance(v, int) and v >= 1)), "'auto' or an integer >= 1"),
    "tracking.experiment": ((lambda v: bool(v)), "a non-empty name"),
    "distributed.nproc_per_node": _ge(1), "distributed.nnodes": _ge(1), "distributed.node_rank": _ge(0),
    "distributed.master_addr": ((lambda v: bool(v)), "the host name or address of node 0"),
    "distributed.master_port": ((lambda v: 1 <= v <= 65535), "a TCP port in [1, 65535]"),
}
# Keys whose value may take more than one type (the default's type is the first).
_TYPES = {"model.dt_rank": (str, int)}
# List keys: the type of their items.
_ITEM_TYPES = {"kb.retrievers": str, "evaluate.modes": str, "evaluate.checkpoints": str,
               "rag_finetune.question_types": str, "refrag_finetune.question_types": str,
               "refrag_finetune.rl_question_types": str}

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping"}


class ParamsError(ValueError):
    """A params.yaml problem; the message names the key path and says what to do."""


def _did_you_mean(key, valid):
    close = closest(key, valid)
    return f"did you mean `{close}`? " if close else ""


def _type_ok(value, default, path):
    want = _TYPES.get(path, (type(default),))
    for t in want:
        if t is bool and isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t not in (bool, int, float) and isinstance(value, t):
            return True
    return False


def _type_error(value, default, path, source):
    want = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in _TYPES.get(path, (type(default),)))
    hint = ""
    if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            float(value)
            hint = (f"; YAML read {value!r} as a string: write it without quotes, with a decimal point "
                    "(1.0e-4, not 1e-4)")
        except ValueError:
            pass
    return ParamsError(f"{source}: {path}: expected {want} (like {default!r}), got {type(value).__name__} "
                       f"({value!r}){hint}")


def _walk(value, default, path, source):
    """Checks keys and types against `default`, recursively; returns a copy with ints in
    float-typed keys turned into floats."""
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ParamsError(f"{source}: {path}: expected a mapping of {', '.join(default)}, got "
                              f"{type(value).__name__} ({value!r})")
        for k in value:
            if k not in default:
                raise ParamsError(f"{source}: {path}.{k}: unknown key; {_did_you_mean(k, default)}"
                                  f"valid keys in {path} are: {', '.join(default)}")
        for k, dv in default.items():
            if k not in value:
                raise ParamsError(f"{source}: {path}.{k} is missing; add it (default: {k}: {_yaml_value(dv)}). "
                                  "Every knob is spelled out in params.yaml so DVC tracks it")
        return {k: _walk(value[k], default[k], f"{path}.{k}", source) for k in default}
    if not _type_ok(value, default, path):
        raise _type_error(value, default, path, source)
    if path in _ITEM_TYPES:
        for i, item in enumerate(value):
            if not isinstance(item, _ITEM_TYPES[path]):
                raise ParamsError(f"{source}: {path}[{i}]: expected {_TYPE_WORDS[_ITEM_TYPES[path]]}, got "
                                  f"{type(item).__name__} ({item!r})")
    if isinstance(default, float):
        return float(value)
    return copy.deepcopy(value)


def _yaml_value(v):
    return yaml.safe_dump(v, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def _get(d, path):
    for part in path.split("."):
        d = d[part]
    return d


def validate_params(params, source="params.yaml"):
    """The validated params (a new dict), or a ParamsError (a ValueError) naming the full key
    path, what is wrong and what to do. `source` names the file in messages."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a mapping of sections ({', '.join(DEFAULTS)}), got "
                          f"{type(params).__name__}")
    for k in params:
        if k not in DEFAULTS:
            raise ParamsError(f"{source}: {k}: unknown section; {_did_you_mean(k, DEFAULTS)}"
                              f"valid sections are: {', '.join(DEFAULTS)}")
    for k in DEFAULTS:
        if k not in params:
            raise ParamsError(f"{source}: section {k} is missing; copy it from the params.yaml in the repository")
    out = {"documents": _documents(params["documents"], source)}
    for name, default in DEFAULTS.items():
        if name != "documents":
            out[name] = _walk(params[name], default, name, source)

    # Impossible values, one key at a time.
    for pattern, (ok, what) in _RULES.items():
        paths = [pattern.replace("*", s, 1) for s in TRAINING_SECTIONS] if pattern.startswith("*.") else [pattern]
        for path in paths:
            value = _get(out, path)
            if not ok(value):
                raise ParamsError(f"{source}: {path}: must be {what}, got {value!r}")

    # Values that must agree with each other.
    for s in TRAINING_SECTIONS:
        if out[s]["warmup_frac"] + out[s]["warmdown_frac"] > 1:
            raise ParamsError(f"{source}: {s}.warmup_frac + {s}.warmdown_frac must be <= 1, got "
                              f"{out[s]['warmup_frac']} + {out[s]['warmdown_frac']}; shorten one of them")
    m = out["midtrain"]
    if m["closed_book_frac"] + m["reading_frac"] > 1:
        raise ParamsError(f"{source}: midtrain.closed_book_frac + midtrain.reading_frac must be <= 1 (the rest is "
                          f"plain chat), got {m['closed_book_frac']} + {m['reading_frac']}")
    if out["rag_finetune"]["k_min"] > out["rag_finetune"]["k"]:
        raise ParamsError(f"{source}: rag_finetune.k_min must be <= rag_finetune.k (each example shows a k drawn from "
                          f"[k_min, k]), got {out['rag_finetune']['k_min']} > {out['rag_finetune']['k']}; set k_min: 0 "
                          "for a fixed k")
    c = out["kb"]["chunking"]
    if c["enabled"] and c["overlap"] >= c["max_words"]:
        raise ParamsError(f"{source}: kb.chunking.overlap must be < kb.chunking.max_words, got {c['overlap']} >= "
                          f"{c['max_words']}")
    if out["model"]["vocab_size"] != out["tokenizer"]["vocab_size"]:
        raise ParamsError(f"{source}: model.vocab_size ({out['model']['vocab_size']}) must equal tokenizer.vocab_size "
                          f"({out['tokenizer']['vocab_size']}): the model embeds the tokenizer's ids; set both to "
                          "the same value")
    built = out["kb"]["retrievers"]
    for s in ("rag_finetune", "refrag_finetune", "evaluate"):
        r = out[s]["retriever"]
        if r == "hybrid" and len(built) < 2:
            raise ParamsError(f"{source}: {s}.retriever is hybrid, which fuses two or more indexes, but kb.retrievers "
                              f"is {built}; add one (e.g. kb.retrievers: [bm25, dense]) or pick {built[0]}")
        if r != "hybrid" and r not in built:
            raise ParamsError(f"{source}: {s}.retriever is {r}, but the KB is built with kb.retrievers {built}; "
                              f"add {r} to kb.retrievers or pick one of {built}")
    d = out["distributed"]
    if d["node_rank"] >= d["nnodes"]:
        raise ParamsError(f"{source}: distributed.node_rank must be < distributed.nnodes ({d['nnodes']}), got "
                          f"{d['node_rank']}; number the machines 0 to nnodes - 1")
    _check_model(out["model"], source)
    return out


def _documents(section, source):
    try:
        return validate_documents_params(section, prefix="documents")
    except ValueError as e:  # prepare.py names the key and suggests the nearest valid one
        raise ParamsError(f"{source}: {e}") from None


def _check_model(model, source):
    # GPTConfig owns the model's rules (pattern length vs n_layer, head divisibility, ...).
    from nanochat_core.model.gpt import GPTConfig
    try:
        GPTConfig.from_dict(dict(model))
    except ValueError as e:
        msg = str(e)
        raise ParamsError(f"{source}: {msg}" if "model." in msg else f"{source}: model: {msg}") from None


def load_params(path="params.yaml"):
    """Reads and validates params.yaml (relative to the working directory)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no params file at {path.resolve()}; run from the repository root (where "
                                "params.yaml and dvc.yaml are)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    return validate_params(raw, source=str(path))


def flatten(d, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
