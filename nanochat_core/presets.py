"""Presets: presets/<name>.yaml are partial overrides deep-merged into params.yaml by
`nanochat preset NAME`; a preset may start from another with `extends: NAME`.
"""
import copy
from pathlib import Path

import yaml

from nanochat_core.common import REPO_ROOT, atomic_write_text
from nanochat_core.params import _did_you_mean, flatten, validate_params


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
