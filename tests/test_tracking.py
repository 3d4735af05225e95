"""MLflow tracking (flows/tracking.py) without Prefect: pipeline grouping, lineage links and
their staleness check, step metrics, failures, and the model registry."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from nanochat_core.common import REPO_ROOT, sha256_file
from nanochat_core.params import load_params

pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # One SQLite store for the module: creating one runs MLflow's migrations (several seconds).
    d = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{d}/mlflow.db"


@pytest.fixture
def ws(tmp_path, monkeypatch, store):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("NANOCHAT_PIPELINE_RUN_ID", raising=False)
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text((REPO_ROOT / "dvc.yaml").read_text())  # paths and the stage graph
    (tmp_path / "mlruns").mkdir()
    return tmp_path


def _client(store):
    from mlflow import MlflowClient
    return MlflowClient(store)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _saved(**kw):
    from steps.common import stage_result
    return stage_result(**kw)


def _prepare_outputs(ws, documents):
    """The files prepare_documents writes (its outs in dvc.yaml), so its run can hash them."""
    for out in ("corpus/shard_00000.jsonl", "qa/train.jsonl"):
        _write(ws / "data" / out, "{}\n")
    return _write(ws / "data" / "documents.jsonl", documents)


def _stage_run(stage, params):
    """StageRun on the stage's own dvc.yaml paths, as flows/stage.py makes it."""
    from pathlib import Path

    from flows.tracking import StageRun
    from nanochat_core import dvcfile
    return StageRun(stage, params, {k: Path(v) for k, v in dvcfile.stage_paths(stage).items()})


def test_stages_share_one_pipeline_run_and_link_through_lineage(ws, store):
    params = load_params()
    c = _client(store)
    docs = _prepare_outputs(ws, '{"id": "a"}\n')
    with _stage_run("prepare_documents", params) as first:
        first.log({"loss": 2.0, "note": "skipped"}, 1)
        first.log({"loss": 1.0}, 2)
        first.finish(_saved(metrics={"documents": 1}))
    _write(ws / "data" / "kb" / "manifest.json", "{}")
    with _stage_run("build_kb", params) as second:
        # the run context the core writes into checkpoint lineage, passed as an argument
        assert second.context()["mlflow_run_id"] == second.run_id
        second.finish(_saved())
    assert "NANOCHAT_MLFLOW_RUN_ID" not in os.environ

    r1, r2 = c.get_run(first.run_id), c.get_run(second.run_id)
    parent = r1.data.tags["mlflow.parentRunId"]
    assert parent == r2.data.tags["mlflow.parentRunId"] == first.pipeline_run_id
    assert c.get_run(parent).data.tags["nanochat.run_type"] == "pipeline"
    assert r1.data.tags["nanochat.stage"] == "prepare_documents" and r1.info.status == "FINISHED"
    assert r1.data.params["documents.world.n_people"] == str(params["documents"]["world"]["n_people"])
    assert "kb.retrievers" not in r1.data.params and r2.data.params["kb.retrievers"] == '["bm25"]'
    assert [m.value for m in c.get_metric_history(first.run_id, "loss")] == [2.0, 1.0]
    assert [m.step for m in c.get_metric_history(first.run_id, "loss")] == [1, 2]
    assert r1.data.metrics["documents"] == 1.0
    # Lineage: build_kb names prepare_documents' run and the hash of the file it read.
    assert r2.data.tags["nanochat.parent_run_ids"] == first.run_id
    assert json.loads(r2.data.tags["nanochat.data_hashes"]) == {"data/documents.jsonl": sha256_file(docs)}
    assert r2.data.tags["nanochat.git_commit"]
    assert "nanochat.lineage_warnings" not in r2.data.tags
    rec = json.loads((ws / "data" / "lineage" / "build_kb.json").read_text())
    assert rec["mlflow_run_id"] == second.run_id and rec["parent_run_ids"] == [first.run_id]
    assert "lineage/build_kb.json" in [a.path for a in c.list_artifacts(second.run_id, "lineage")]


def test_stale_lineage_is_not_linked(ws, store):
    params = load_params()
    docs = _prepare_outputs(ws, "one\n")
    with _stage_run("prepare_documents", params) as first:
        first.finish(_saved())
    docs.write_text("edited by hand after the stage ran\n")
    _write(ws / "data" / "kb" / "manifest.json", "{}")
    with _stage_run("build_kb", params) as second:
        second.finish(_saved())
    tags = _client(store).get_run(second.run_id).data.tags
    assert tags["nanochat.parent_run_ids"] == ""
    assert "does not match" in tags["nanochat.lineage_warnings"]


def test_pipeline_run_from_environment(ws, store):
    from flows.tracking import create_pipeline_run, open_experiment
    params = load_params()
    client, exp = open_experiment(params)
    pid = create_pipeline_run(client, exp, "pipeline-test")
    os.environ["NANOCHAT_PIPELINE_RUN_ID"] = pid
    try:
        _prepare_outputs(ws, "{}\n")
        with _stage_run("prepare_documents", params) as run:
            run.finish(_saved())
        assert _client(store).get_run(run.run_id).data.tags["mlflow.parentRunId"] == pid
        # The pipeline flow owns its run's status: a stage leaves it running.
        assert _client(store).get_run(pid).info.status == "RUNNING"
        os.environ["NANOCHAT_PIPELINE_RUN_ID"] = "0" * 32
        with pytest.raises(Exception):
            _stage_run("evaluate", params).__enter__()
    finally:
        os.environ.pop("NANOCHAT_PIPELINE_RUN_ID", None)


def test_failed_stage_is_marked_failed(ws, store):
    with pytest.raises(RuntimeError):
        with _stage_run("evaluate", load_params()) as run:
            raise RuntimeError("boom")
    r = _client(store).get_run(run.run_id)
    assert r.info.status == "FAILED" and "boom" in r.data.tags["nanochat.error"]
    assert _client(store).get_run(run.pipeline_run_id).info.status == "FAILED"


def test_final_models_are_registered(ws, store):
    from nanochat_core.checkpoint import checkpoint_hash, save_checkpoint
    ckpt = ws / "checkpoints" / "rag"
    save_checkpoint(ckpt, 7, {"w": torch.zeros(2)}, {"config": {}, "lineage": {}})
    for read in ("checkpoints/mid/x", "checkpoints/tokenizer/tokenizer.json", "data/qa/train.jsonl", "data/kb/manifest.json"):
        _write(ws / read, "{}")  # what the stage reads: its deps in dvc.yaml, hashed into the lineage
    with _stage_run("rag_finetune", load_params()) as run:
        run.finish(_saved(checkpoint_hash=checkpoint_hash(ckpt)))
    c = _client(store)
    versions = c.search_model_versions("name = 'nanochat-rag'")
    mine = [v for v in versions if v.run_id == run.run_id]
    assert len(mine) == 1
    assert mine[0].tags["nanochat.checkpoint_hash"] == checkpoint_hash(ckpt)
    assert mine[0].tags["nanochat.dvc_path"] == "checkpoints/rag"
    logged = [a.path for a in c.list_artifacts(run.run_id, "checkpoint")]
    assert logged == ["checkpoint/meta_000007.json"]  # meta only: weights stay in the DVC cache
    assert c.get_run(run.run_id).data.tags["nanochat.checkpoint_hash"] == checkpoint_hash(ckpt)


def test_dvc_ancestor_is_the_launcher(tmp_path):
    # All stages started by one `dvc repro` join one pipeline run: the key is the nearest
    # process named dvc (DVC runs a stage through a shell).
    fake = tmp_path / "dvc"
    child = "from flows.tracking import launcher_process; print(launcher_process().pid)"
    fake.write_text(f"#!{sys.executable}\nimport os, subprocess, sys\nprint(os.getpid())\nsys.stdout.flush()\n"
                    f"subprocess.run(['/bin/sh', '-c', {json.dumps(sys.executable)} + ' -c \"{child}\"'],"
                    " check=True)\n")
    fake.chmod(0o755)
    out = subprocess.run([str(fake)], capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout.split()
    assert out[0] == out[1]
    # Without a dvc ancestor, the process is its own launcher.
    from flows.tracking import launcher_process
    assert launcher_process().pid == os.getpid()


def test_tracking_is_never_a_stage_param():
    # Changing the MLflow experiment must not rerun anything.
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert not any("tracking" in str(s.get("params", [])) for s in stages.values())
