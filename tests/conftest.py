import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def reference_data():
    from benchmarks import reference_data_dir
    d = reference_data_dir()
    if not d.exists():
        pytest.skip(f"reference data not found at {d} (set NANOCHAT_REFERENCE_DATA)")
    return d


@pytest.fixture
def bare_clone(tmp_path):
    """tmp_path holding only the repository's dvc.yaml and params.yaml: a clone before `dvc repro`."""
    import shutil

    from nanochat_core.common import REPO_ROOT
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO_ROOT / f, tmp_path / f)
    return tmp_path
