"""One Prefect flow runs any stage. It is each DVC stage's command, with the stage's paths:

    python -m flows.stage <stage> --name path [--name path ...]

load (retried: it is I/O) -> run (not retried: training resumes from its step checkpoints
instead) -> save (retried once), all inside one MLflow run (flows/tracking.py). Without
PREFECT_API_URL, Prefect starts a temporary local server for the flow (~10 s); the pipeline
flow passes its own server to every stage, so they skip that.
"""
# flows/__init__.py (imported first, as this module's package) turns telemetry off and sets
# Prefect's defaults before prefect is imported.
import importlib
import os
import sys
from pathlib import Path

from prefect import flow, runtime, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from flows.tracking import StageRun
from nanochat_core import dvcfile
from nanochat_core.params import load_params
from steps import torchrun


def _step(stage):
    return importlib.import_module(f"steps.{stage}")


# NO_CACHE: a stage's inputs can be large (documents, model state); never hash them for a cache key.
@task(name="load", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_task(stage, params, paths):
    return _step(stage).load(params, paths)


@task(name="run", cache_policy=NO_CACHE)
def run_task(stage, inputs, params, paths, log, ctx, params_path="params.yaml"):
    if stage in torchrun.DISTRIBUTED_STAGES and torchrun.world_size(params) > 1:
        return torchrun.launch(stage, params, params_path, paths, log, ctx)  # every rank loads its own inputs
    return _step(stage).run(inputs, params, paths, log, ctx)


@task(name="save", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def save_task(stage, result, params, paths):
    return _step(stage).save(result, params, paths)


@flow(name="stage", flow_run_name="{stage}", log_prints=True)
def stage_flow(stage: str, paths: dict[str, str] | None = None, params_path: str = "params.yaml") -> dict:
    """Runs one pipeline stage (steps/<stage>.py) on its paths (by default those its dvc.yaml
    command passes), with MLflow tracking and lineage."""
    declared = dvcfile.stage_paths(stage)  # an unknown stage fails here, listing the real ones
    paths = declared if paths is None else paths
    params = load_params(params_path)  # refuses bad params before anything runs
    paths = {k: Path(v) for k, v in paths.items()}
    with StageRun(stage, params, paths, prefect_flow_run_id=runtime.flow_run.id) as tracking:
        # quote(): Prefect would otherwise walk these (possibly huge) objects looking for futures.
        inputs = load_task(stage, params, paths)
        result = run_task(stage, quote(inputs), params, paths, tracking.log, tracking.context(), params_path)
        saved = save_task(stage, quote(result), params, paths)
        tracking.finish(saved)
    return {"stage": stage, "mlflow_run_id": tracking.run_id, "metrics": saved["metrics"]}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        names = list(dvcfile.load())
        if not argv or argv[0] not in names:
            print(f"usage: python -m flows.stage STAGE --name path ...\nstages: {', '.join(names)}", file=sys.stderr)
            return 2
        stage, paths = argv[0], dvcfile.parse_args(argv[1:])
        load_params()  # fail in a second, with the key's name, before Prefect or MLflow start
    except (ValueError, FileNotFoundError) as e:
        print(f"{argv[0] if argv else 'flows.stage'}: {e}", file=sys.stderr)
        return 2
    labels = [stage] + ([f"pipeline-{os.environ['NANOCHAT_PIPELINE_RUN_ID'][:8]}"]
                        if os.environ.get("NANOCHAT_PIPELINE_RUN_ID") else [])
    with tags(*labels):
        state = stage_flow(stage, paths, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
