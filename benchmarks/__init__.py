"""Benchmarks: scripts that measure speed and quality and write JSON reports."""
import os
from pathlib import Path

from nanochat_core.common import REPO_ROOT


def reference_data_dir() -> Path:
    """The shared benchmark data (BEIR SciFact, HotpotQA, SQuAD) beside the repository; never
    part of it. NANOCHAT_REFERENCE_DATA points elsewhere."""
    env = os.environ.get("NANOCHAT_REFERENCE_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data")


def report_path(name) -> Path:
    """Where a benchmark writes its JSON report by default (git-ignored)."""
    return REPO_ROOT / "benchmarks" / "results" / f"{name}.json"
