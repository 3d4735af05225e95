"""MLflow for the pipeline: one run per stage execution, nested under one pipeline run.

Which pipeline run a stage joins:
  1. NANOCHAT_PIPELINE_RUN_ID when set (flows/pipeline.py sets it for the `dvc repro` it starts);
  2. else the run tagged with the launching process: the nearest `dvc` ancestor process (so all
     stages of one plain `dvc repro` share a parent), or this process when there is none. The
     tag is pid + start time, so a reused pid never joins an old run.

Lineage: after save, each stage writes its lineage record (its `--lineage` path in dvc.yaml:
{stage, mlflow_run_id, inputs, outputs, checkpoint_hash, ...}). A stage links to the runs of
its parent stages (dvc.yaml's graph) through their records, and only when the parent's
recorded output hash equals the hash of what this stage actually read (otherwise the record
is stale, e.g. after `dvc checkout`, and it says so). Which of a stage's paths are inputs and
which are outputs is read from its deps and outs in dvc.yaml.

Everything goes through MlflowClient with explicit run ids (no fluent "active run"), so the
log callback is safe from any thread a Prefect task runs in.
"""
import json
import logging
import os
import socket
import time
from pathlib import Path

import psutil

from nanochat_core import dvcfile
from nanochat_core.common import atomic_write_json, git_commit, hash_path
from nanochat_core.params import flatten

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "nanochat-rag"
# Final models go to the MLflow model registry under these names.
REGISTERED_MODELS = {"rag_finetune": "nanochat-rag", "refrag_finetune": "nanochat-refrag"}
log = logging.getLogger(__name__)


def tracking_uri(params=None):
    return os.environ.get("MLFLOW_TRACKING_URI") or ((params or {}).get("tracking") or {}).get("tracking_uri") \
        or DEFAULT_URI


def open_experiment(params=None):
    """(MlflowClient, experiment_id), creating the experiment on first use."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    client = MlflowClient(tracking_uri(params))
    name = ((params or {}).get("tracking") or {}).get("experiment") or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client, client.create_experiment(name)
        except MlflowException:  # created meanwhile by another stage
            exp = client.get_experiment_by_name(name)
    return client, exp.experiment_id


def launcher_process():
    """The nearest `dvc` ancestor (dvc runs a stage through a shell), or this process."""
    me = psutil.Process()
    for p in me.parents():
        try:
            cmd = p.cmdline()
            if p.name() == "dvc" or any(os.path.basename(a) == "dvc" for a in cmd[:2]) or cmd[1:3] == ["-m", "dvc"]:
                return p
        except (psutil.Error, IndexError):
            continue
    return me


def launcher_key(proc):
    return f"{socket.gethostname()}:{proc.pid}:{int(proc.create_time() * 1000)}"


def create_pipeline_run(client, experiment_id, name, tags=None):
    tags = {"nanochat.run_type": "pipeline", "nanochat.git_commit": git_commit(), **(tags or {})}
    if os.environ.get("DVC_EXP_NAME"):
        tags["nanochat.dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def pipeline_run(client, experiment_id, stage):
    """(run id, owned): the pipeline run this stage nests under. `owned` means no pipeline flow
    manages it, so the stage keeps its status current."""
    rid = os.environ.get("NANOCHAT_PIPELINE_RUN_ID")
    if rid:
        client.get_run(rid)  # fails loudly on a wrong id rather than nesting under nothing
        return rid, False
    proc = launcher_process()
    key = launcher_key(proc)
    found = client.search_runs([experiment_id], f"tags.`nanochat.launcher` = '{key}'", max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id, True
    via_dvc = proc.pid != os.getpid()
    try:
        cmd = " ".join(proc.cmdline())[:500]
    except psutil.Error:
        cmd = ""
    name = f"{'dvc-repro' if via_dvc else stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {"nanochat.launcher": key, "nanochat.launcher_cmd": cmd}
    return create_pipeline_run(client, experiment_id, name, tags), True


def _params_for(stage, params, stages):
    flat = flatten({s: params[s] for s in dvcfile.sections(stage, stages) if s in params})
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in flat.items()}


def lineage_file(stage, stages):
    """A stage's lineage record: its `--lineage` path in dvc.yaml. It is an out of its stage
    but a dep of none, so its per-run content (an MLflow run id) never reruns anything."""
    return Path(dvcfile.stage_paths(stage, stages)["lineage"])


def io_paths(stage, paths, stages):
    """(inputs, outputs): which of the stage's command paths dvc.yaml lists as deps and outs."""
    entry = stages[stage]
    norm = lambda p: os.path.normpath(str(p))
    deps = {norm(d) for d in dvcfile.listed(entry.get("deps"))}
    outs = {norm(o) for o in dvcfile.listed(entry.get("outs"))}
    inputs = {k: p for k, p in paths.items() if norm(p) in deps}
    outputs = {k: p for k, p in paths.items() if norm(p) in outs and k != "lineage"}
    return inputs, outputs


def read_lineage(stage, stages):
    p = lineage_file(stage, stages)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


class StageRun:
    """with StageRun(stage, params) as run: ... run.log(metrics, step) ... run.finish(saved)"""

    def __init__(self, stage, params, paths, prefect_flow_run_id=None, dvc_yaml="dvc.yaml"):
        self.stage, self.params, self.paths, self.prefect_flow_run_id = stage, params, paths, prefect_flow_run_id
        self.stages = dvcfile.load(dvc_yaml)
        self.commit = git_commit()
        self._last_line = 0.0

    def __enter__(self):
        from mlflow.entities import Param
        self.client, self.experiment_id = open_experiment(self.params)
        self.pipeline_run_id, self.owns_pipeline = pipeline_run(self.client, self.experiment_id, self.stage)
        tags = {"mlflow.parentRunId": self.pipeline_run_id, "nanochat.run_type": "stage", "nanochat.stage": self.stage,
                "nanochat.git_commit": self.commit, "nanochat.pipeline_run_id": self.pipeline_run_id}
        if self.prefect_flow_run_id:
            tags["nanochat.prefect_flow_run_id"] = str(self.prefect_flow_run_id)
        self.run_id = self.client.create_run(self.experiment_id, run_name=self.stage, tags=tags).info.run_id
        params = [Param(k, v[:6000]) for k, v in _params_for(self.stage, self.params, self.stages).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        return self

    def context(self):
        """The run context the core writes into checkpoint lineage."""
        return {"mlflow_run_id": self.run_id, "pipeline_run_id": self.pipeline_run_id, "git_commit": self.commit}

    def log(self, metrics, step=None):
        """The stage's log callback: MLflow step metrics plus one line in the Prefect log."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        clean = {k: float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if clean:
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step or 0) for k, v in clean.items()])
        # MLflow gets every call; the Prefect log one line per few seconds (a step can take 0.1 s).
        if step is None or time.time() - self._last_line >= 5:
            self._last_line = time.time()
            line = " ".join(f"{k}={v:.4g}" for k, v in clean.items())
            _prefect_logger().info(f"{self.stage}{'' if step is None else f' step {step}'}: {line}")

    def finish(self, saved):
        """Final metrics, artifacts, lineage tags, data/lineage/<stage>.json, registry."""
        c, rid = self.client, self.run_id
        ins, outs = io_paths(self.stage, self.paths, self.stages)
        inputs = {_rel(p): hash_path(p) for p in [*ins.values(), *saved["inputs"].values()]}
        outputs = {_rel(p): hash_path(p) for p in outs.values()}
        parents = dvcfile.parents(self.stage, self.stages)
        parent_ids, parent_ckpts, warnings = [], [], []
        for parent in parents:
            rec = read_lineage(parent, self.stages)
            if rec is None:
                warnings.append(f"{parent}: no lineage record at {lineage_file(parent, self.stages)}")
                continue
            stale = [p for p, h in inputs.items() if p in rec.get("outputs", {}) and rec["outputs"][p] != h]
            if stale:
                warnings.append(f"{parent}: its lineage record does not match what this stage read "
                                f"({', '.join(stale)}); not linked")
                continue
            parent_ids.append(rec["mlflow_run_id"])
            if rec.get("checkpoint_hash"):
                parent_ckpts.append(rec["checkpoint_hash"])
        if saved["metrics"]:
            from mlflow.entities import Metric
            now = int(time.time() * 1000)
            c.log_batch(rid, metrics=[Metric(k, v, now, 0) for k, v in saved["metrics"].items()])
        tags = {
            "nanochat.parent_run_ids": ",".join(parent_ids),
            "nanochat.parent_stages": ",".join(parents),
            "nanochat.parent_checkpoint_hash": ",".join(parent_ckpts),
            "nanochat.checkpoint_hash": saved["checkpoint_hash"] or "",
            "nanochat.data_hashes": json.dumps(inputs, sort_keys=True),
            "nanochat.output_hashes": json.dumps(outputs, sort_keys=True),
        }
        if warnings:
            tags["nanochat.lineage_warnings"] = "; ".join(warnings)[:5000]
            for w in warnings:
                _prefect_logger().warning(f"lineage: {w}")
        for k, v in tags.items():
            c.set_tag(rid, k, v)
        record = {"stage": self.stage, "mlflow_run_id": rid, "pipeline_run_id": self.pipeline_run_id,
                  "inputs": inputs, "outputs": outputs, "parent_run_ids": parent_ids,
                  "checkpoint_hash": saved["checkpoint_hash"], "git_commit": self.commit,
                  "tracking_uri": tracking_uri(self.params)}
        own = lineage_file(self.stage, self.stages)
        atomic_write_json(own, record)
        for a in saved["artifacts"]:
            a = Path(a)
            if a.is_dir():
                c.log_artifacts(rid, str(a), artifact_path=a.name)
            elif a.is_file():
                c.log_artifact(rid, str(a))
        c.log_artifact(rid, str(own), artifact_path="lineage")
        if self.stage in REGISTERED_MODELS and self.params.get("tracking", {}).get("register_models", True):
            self._register(saved)

    def _register(self, saved):
        """Registers the stage's checkpoint. MLflow gets the checkpoint's meta JSON (config,
        tokenizer hash, lineage, file hashes) and, with tracking.log_model_weights, the weights;
        otherwise the weights stay in the DVC cache, found by the version's tags."""
        from nanochat_core.checkpoint import latest_step, load_meta
        ckpt = Path(self.paths.get("out", ""))
        step = latest_step(ckpt) if ckpt.is_dir() else None
        if step is None:
            _prefect_logger().warning(f"{self.stage}: no checkpoint in its --out path; nothing registered")
            return
        meta = load_meta(ckpt, step)  # verified against its own hash
        files = [ckpt / f"meta_{step:06d}.json"]
        if self.params.get("tracking", {}).get("log_model_weights"):
            files.append(ckpt / meta["model_file"])
        for f in files:
            self.client.log_artifact(self.run_id, str(f), artifact_path="checkpoint")
        name = REGISTERED_MODELS[self.stage]
        from mlflow.exceptions import MlflowException
        try:
            self.client.create_registered_model(name, description="nanochat-rag checkpoints; weights in the DVC cache "
                                                "(`dvc checkout` at the version's git commit) unless logged here")
        except MlflowException:
            pass  # exists
        mv = self.client.create_model_version(
            name, source=f"runs:/{self.run_id}/checkpoint", run_id=self.run_id,
            tags={"nanochat.checkpoint_hash": saved["checkpoint_hash"] or "", "nanochat.dvc_path": _rel(ckpt),
                  "nanochat.step": str(step), "nanochat.git_commit": self.commit,
                  "nanochat.model_sha256": meta["model_sha256"],
                  "nanochat.weights_logged": str(len(files) > 1).lower()})
        self.client.set_tag(self.run_id, "nanochat.registered_model", f"{name}/{mv.version}")

    def __exit__(self, exc_type, exc, tb):
        status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        if exc is not None:
            self.client.set_tag(self.run_id, "nanochat.error", f"{exc_type.__name__}: {exc}"[:5000])
        self.client.set_terminated(self.run_id, status)
        if self.owns_pipeline:
            # A plain `dvc repro` has no end hook: the pipeline run shows its latest stage's outcome.
            self.client.set_terminated(self.pipeline_run_id, status)
        return False


def _rel(path):
    """A path as the stages name it: relative to the working directory (the repository root)."""
    rel = os.path.relpath(os.path.abspath(path))
    return os.path.normpath(path) if rel.startswith("..") else rel


def _prefect_logger():
    try:
        from prefect import get_run_logger
        return get_run_logger()
    except Exception:  # outside a flow or task run (MissingContextError)
        return log
