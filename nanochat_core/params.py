"""params.yaml: loading, validation, and presets.

    params = load_params("params.yaml")   # validated plain dict, or a ValueError naming the key

DEFAULTS mirrors params.yaml key for key and is the schema: a key's type is its default's
type. params.yaml must spell out every key (no hidden defaults), so the values DVC tracks are
exactly the values the stages use. The `documents` section belongs to
nanochat_core.data.prepare and is validated there.

Presets (presets/<name>.yaml) are partial overrides deep-merged into params.yaml by
`nanochat preset NAME`; a preset may start from another with `extends: NAME`.
"""
import copy
from pathlib import Path

import yaml

from nanochat_core.common import REPO_ROOT, atomic_write_text, closest
from nanochat_core.data.prepare import DEFAULTS as DOCUMENTS_DEFAULTS
from nanochat_core.data.prepare import QA_TYPES
from nanochat_core.data.prepare import validate_params as validate_documents_params
from nanochat_core.tokenizer import SPECIAL_TOKENS

KB_RETRIEVERS = ("tfidf", "bm25", "dense")        # what a KB can index (retrieval.kb.ALL_RETRIEVERS)
RETRIEVERS = KB_RETRIEVERS + ("hybrid",)          # what a stage can query (hybrid fuses at query time)
BM25_METHODS = ("robertson", "atire", "bm25l", "bm25+", "lucene")
DEVICES = ("auto", "cpu", "cuda", "mps")
MODES = ("closed_book", "rag", "refrag")
CHECKPOINTS = ("base", "mid", "rag", "refrag")

TRAINING = {
    "seed": 0, "steps": 200, "batch_size": 8, "grad_accum": 1,
    "matrix_lr": 0.02, "embedding_lr": 0.2, "unembedding_lr": 0.004, "scalar_lr": 0.004,
    "weight_decay": 0.0, "warmup_frac": 0.0, "warmdown_frac": 0.2,
    "eval_every": 50, "eval_tokens": 16384, "checkpoint_every": 50, "keep_last": 2, "log_every": 10,
    "device": "auto",
}

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
    "pretrain": {**TRAINING, "seed": 42},
    "midtrain": {**TRAINING, "seed": 43, "max_len": 640, "closed_book_frac": 0.3, "reading_frac": 0.3,
                 "n_distractors": 2, "swap_frac": 0.5, "drills": 12000, "drill_questions": 1,
                 "drill_docs": 1, "drill_people": 3000},
    "rag_finetune": {**TRAINING, "seed": 44, "max_len": 640, "k": 3, "retriever": "bm25", "abstain_frac": 0.1, "swap_frac": 0.5,
                     "question_types": ["single", "unanswerable"], "drills": 6000, "drill_people": 3000},
    "refrag_finetune": {
        **TRAINING, "seed": 45, "max_len": 1024, "max_hops": 3, "k": 3, "retriever": "bm25",
        "question_types": ["2hop", "3hop", "single"], "rag_mix": 0.3, "drills": 2500, "drill_people": 3000,
    },
    "evaluate": {
        "seed": 0, "max_questions_per_type": 50, "k": 3, "max_hops": 3, "max_new_tokens": 48, "batch_size": 16,
        "retriever": "bm25", "modes": list(MODES), "checkpoints": list(CHECKPOINTS), "device": "auto",
    },
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
    "*.log_every": _ge(1), "*.device": _ONE_OF(DEVICES),
    "midtrain.closed_book_frac": _FRACTION, "midtrain.reading_frac": _FRACTION, "midtrain.n_distractors": _ge(0),
    "rag_finetune.question_types": _SUBSET(QA_TYPES), "refrag_finetune.question_types": _SUBSET(QA_TYPES),
    "refrag_finetune.rag_mix": _FRACTION, "evaluate.seed": _ge(0), "evaluate.batch_size": _ge(1),
    "evaluate.device": _ONE_OF(DEVICES),
    "rag_finetune.k": _ge(1), "rag_finetune.abstain_frac": _FRACTION,
    "midtrain.swap_frac": _FRACTION, "rag_finetune.swap_frac": _FRACTION,
    **{f"{s}.{k}": r for s in ("midtrain", "rag_finetune", "refrag_finetune")
       for k, r in (("drills", _ge(0)), ("drill_people", _ge(10)))},
    "midtrain.drill_questions": _ge(1), "midtrain.drill_docs": _ge(1),
    "midtrain.max_len": _ge(16), "rag_finetune.max_len": _ge(16), "refrag_finetune.max_len": _ge(16),
    "refrag_finetune.k": _ge(1), "refrag_finetune.max_hops": _ge(1),
    "rag_finetune.retriever": _ONE_OF(RETRIEVERS),
    "refrag_finetune.retriever": _ONE_OF(RETRIEVERS),
    "evaluate.retriever": _ONE_OF(RETRIEVERS),
    "evaluate.max_questions_per_type": _ge(1), "evaluate.k": _ge(1), "evaluate.max_hops": _ge(1),
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
}
# Keys whose value may take more than one type (the default's type is the first).
_TYPES = {"model.dt_rank": (str, int)}
# List keys: the type of their items.
_ITEM_TYPES = {"kb.retrievers": str, "evaluate.modes": str, "evaluate.checkpoints": str,
               "rag_finetune.question_types": str, "refrag_finetune.question_types": str}

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


# ------------------------------------------------------------------------------------ presets

def presets_dir():
    local = Path("presets")
    return local if local.is_dir() else REPO_ROOT / "presets"


def list_presets():
    """{name: one-line description (the file's first comment)}."""
    out = {}
    for p in sorted(presets_dir().glob("*.yaml")):
        first = next((ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.startswith("#")), "#")
        out[p.stem] = first.lstrip("# ").strip()
    return out


def load_preset(name, _seen=()):
    """The preset's overrides as a dict, with `extends:` resolved (base first)."""
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        names = list(list_presets())
        raise ValueError(f"no preset {name!r} in {presets_dir()}; {_did_you_mean(name, names)}"
                         f"available: {', '.join(names) or '(none)'}")
    if name in _seen:
        raise ValueError(f"preset {name!r} extends itself (chain: {' -> '.join([*_seen, name])})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a preset is a mapping of params.yaml sections")
    base = data.pop("extends", None)
    return deep_merge(load_preset(base, (*_seen, name)), data) if base else data


def deep_merge(base, override):
    """A new dict: `override` merged into `base`; mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_preset(name, path="params.yaml", write=True):
    """Deep-merges preset `name` into the params file, validates the result, then writes it
    atomically (comments kept). Returns the validated params. Nothing is written when the
    result is invalid."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    preset = load_preset(name)
    merged = deep_merge(raw, preset)
    params = validate_params(merged, source=f"{path} with preset {name}")
    if write:
        atomic_write_text(path, _render_merged(path.read_text(encoding="utf-8"), preset, merged))
    return params


def _render_merged(text, preset, merged):
    """The params file with the preset's values put in place. ruamel.yaml (installed with DVC,
    which edits params.yaml the same way for `dvc exp run -S`) keeps comments and layout; without
    it the file is re-dumped and comments are lost."""
    try:
        import io

        from ruamel.yaml import YAML
        from ruamel.yaml.comments import CommentedMap, CommentedSeq
    except ImportError:
        return yaml.safe_dump(merged, sort_keys=False, default_flow_style=None)
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096

    def float_repr(representer, value):
        # YAML 1.1 readers (PyYAML, so DVC and us) need a dot and a signed exponent: 5.0e-05, not 5e-05.
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            text = text.replace("e", ".0e", 1)
        return representer.represent_scalar("tag:yaml.org,2002:float", text)
    rt.representer.add_representer(float, float_repr)
    doc = rt.load(text)

    def put(node, over):
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(node.get(k), dict):
                put(node[k], v)
            elif isinstance(v, list):
                seq = CommentedSeq(v)
                seq.fa.set_flow_style()
                node[k] = seq
            elif isinstance(v, dict):
                node[k] = CommentedMap(v)
            else:
                node[k] = v
    put(doc, preset)
    buf = io.StringIO()
    rt.dump(doc, buf)
    out = buf.getvalue()
    if yaml.safe_load(out) != merged:  # never write something other than what was validated
        return yaml.safe_dump(merged, sort_keys=False, default_flow_style=None)
    return out


def register(sub):
    p = sub.add_parser("preset", help="apply a named configuration from presets/ to params.yaml")
    p.add_argument("name", nargs="?", help="preset name (see --list)")
    p.add_argument("--list", action="store_true", help="list the presets")
    p.add_argument("--params", default="params.yaml", help="params file to update (default: params.yaml)")
    p.add_argument("--dry-run", action="store_true", help="validate the result and show the changes; write nothing")
    p.set_defaults(func=cmd_preset)


def cmd_preset(args):
    if args.list or not args.name:
        for name, desc in list_presets().items():
            print(f"{name:22s} {desc}")
        return 0
    before = flatten(yaml.safe_load(Path(args.params).read_text(encoding="utf-8")) or {})
    after = flatten(apply_preset(args.name, args.params, write=not args.dry_run))
    changed = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
    for k, (old, new) in changed.items():
        print(f"  {k}: {old!r} -> {new!r}")
    verb = "would change" if args.dry_run else "changed"
    print(f"preset {args.name}: {verb} {len(changed)} value(s) in {args.params}"
          + ("" if args.dry_run else "; run `dvc repro` (or `git checkout params.yaml` to undo)"))
    return 0
