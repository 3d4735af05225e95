"""One Prefect flow runs any stage. It is each DVC stage's command:

    python -m flows.stage <stage>

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

from prefect import flow, runtime, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from flows.tracking import StageRun
from nanochat_core.params import load_params
from steps.common import STAGES


def _step(stage):
    return importlib.import_module(f"steps.{stage}")


# NO_CACHE: a stage's inputs can be large (documents, model state); never hash them for a cache key.
@task(name="load", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_task(stage, params):
    return _step(stage).load(params)


@task(name="run", cache_policy=NO_CACHE)
def run_task(stage, inputs, params, log):
    return _step(stage).run(inputs, params, log)


@task(name="save", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def save_task(stage, result, params):
    return _step(stage).save(result, params)


@flow(name="stage", flow_run_name="{stage}", log_prints=True)
def stage_flow(stage: str, params_path: str = "params.yaml") -> dict:
    """Runs one pipeline stage (steps/<stage>.py) with MLflow tracking and lineage."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    params = load_params(params_path)  # refuses bad params before anything runs
    with StageRun(stage, params, prefect_flow_run_id=runtime.flow_run.id) as tracking:
        # quote(): Prefect would otherwise walk these (possibly huge) objects looking for futures.
        inputs = load_task(stage, params)
        result = run_task(stage, quote(inputs), params, tracking.log)
        saved = save_task(stage, quote(result), params)
        tracking.finish(saved)
    return {"stage": stage, "mlflow_run_id": tracking.run_id, "metrics": saved["metrics"], "outputs": saved["outputs"]}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in STAGES:
        print(f"usage: python -m flows.stage STAGE\nstages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    stage = argv[0]
    try:
        load_params()  # fail in a second, with the key's name, before Prefect or MLflow start
    except (ValueError, FileNotFoundError) as e:
        print(f"{stage}: {e}", file=sys.stderr)
        return 2
    labels = [stage] + ([f"pipeline-{os.environ['NANOCHAT_PIPELINE_RUN_ID'][:8]}"]
                        if os.environ.get("NANOCHAT_PIPELINE_RUN_ID") else [])
    with tags(*labels):
        state = stage_flow(stage, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
