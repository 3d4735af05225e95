"""dvc.yaml read as plain data: the one place that names the pipeline's paths and its graph.

Each stage's command passes its paths as `--name path` pairs, as DVC's example projects do:

    python -m flows.stage midtrain --parent checkpoints/base --qa data/qa ... --out checkpoints/mid

so a path is written once, in dvc.yaml, beside the deps/outs DVC hashes. From the same file
come the stage order, each stage's params sections, and its parents (the stages whose outputs
it depends on). This module reads YAML; it never imports DVC.
"""
import shlex
from pathlib import Path

import yaml


def load(path="dvc.yaml"):
    """{stage: its dvc.yaml entry}, in pipeline order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} at {path.resolve()}; run from the repository root (where dvc.yaml is)")
    stages = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ValueError(f"{path}: no `stages:` mapping")
    return stages


def _entry(stages, stage):
    if stage not in stages:
        raise ValueError(f"unknown stage {stage!r}; dvc.yaml's stages are {', '.join(stages)}")
    return stages[stage]


def parse_args(args):
    """['--qa', 'data/qa', '--out', 'x'] -> {"qa": "data/qa", "out": "x"}; anything else is an error."""
    if len(args) % 2 or any(not a.startswith("--") for a in args[::2]):
        raise ValueError(f"expected --name path pairs, got {' '.join(args)!r}")
    out = {}
    for name, value in zip(args[::2], args[1::2]):
        key = name[2:].replace("-", "_")
        if key in out:
            raise ValueError(f"{name} given twice")
        out[key] = value
    return out


def stage_paths(stage, stages=None):
    """{name: path} from the stage's command (the words after `flows.stage <stage>`)."""
    stages = stages if stages is not None else load()
    words = shlex.split(" ".join(str(_entry(stages, stage)["cmd"]).split()))
    if stage not in words:
        raise ValueError(f"dvc.yaml: stage {stage}'s cmd does not name the stage: {' '.join(words)}")
    return parse_args(words[words.index(stage) + 1:])


def listed(items):
    # deps/outs/metrics/plots entries are strings or one-key mappings {path: options}
    for it in items or []:
        yield from (it if isinstance(it, dict) else [it])


def outputs(stage, stages=None):
    """Every path the stage writes: outs, metrics and plots."""
    e = _entry(stages if stages is not None else load(), stage)
    return [p for key in ("outs", "metrics", "plots") for p in listed(e.get(key))]


def deps(stage, stages=None):
    """The stage's deps (paths), as listed."""
    return list(listed(_entry(stages if stages is not None else load(), stage).get("deps")))


def sections(stage, stages=None):
    """The params.yaml sections the stage reads (its `params:`)."""
    return [p for p in _entry(stages if stages is not None else load(), stage).get("params", []) if isinstance(p, str)]


def parents(stage, stages=None):
    """The stages whose outputs this stage depends on, in pipeline order."""
    stages = stages if stages is not None else load()
    stage_deps = deps(stage, stages)

    def inside(path, root):
        return path == root or path.startswith(root.rstrip("/") + "/")
    return [s for s in stages if s != stage and any(inside(d, o) for d in stage_deps for o in outputs(s, stages))]
