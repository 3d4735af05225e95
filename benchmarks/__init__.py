"""Benchmarks: scripts that measure speed and quality and write JSON reports."""
import os
from pathlib import Path

import yaml

from nanochat_core.common import REPO_ROOT


def reference_data_dir() -> Path:
    """The shared benchmark data (BEIR SciFact, HotpotQA, SQuAD) beside the repository; never
    part of it. NANOCHAT_REFERENCE_DATA points elsewhere."""
    env = os.environ.get("NANOCHAT_REFERENCE_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data")


def report_path(name) -> Path:
    """Where a benchmark writes its JSON report by default (git-ignored)."""
    return REPO_ROOT / "benchmarks" / "results" / f"{name}.json"


def apply_sets(params, sets, allowed=lambda section, name: True, expected="STAGE.KEY=VALUE with a key of params.yaml"):
    """params with each `--set STAGE.KEY=VALUE` (a YAML value) applied, then validated as
    params.yaml is. ValueError names the first override that is not an existing key that
    `allowed(section, name)` accepts (saying `expected`), or the key validation refuses."""
    from nanochat_core.params import validate_params
    for kv in sets:
        key, sep, value = kv.partition("=")
        section, _, name = key.partition(".")
        if not sep or section not in params or name not in params[section] or not allowed(section, name):
            raise ValueError(f"--set {kv}: expected {expected}")
        params[section][name] = yaml.safe_load(value)
    return validate_params(params, source="params.yaml with --set")
