"""The pipeline flow: `dvc repro` as one Prefect flow and one MLflow pipeline run.

    python -m flows.pipeline [STAGE ...] [--force]
    prefect deployment run 'pipeline/nanochat-pipeline'

DVC decides what runs (only stages whose code, params or data changed); this flow opens the
MLflow pipeline run that every stage nests under (NANOCHAT_PIPELINE_RUN_ID), hands the stages
its own Prefect API (so no stage starts a temporary server), streams DVC's output into the
Prefect log, and reports each stage as ran / unchanged / cached / failed / not run, both as a
Prefect artifact and as MLflow tags (nanochat.outcome.<stage>).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

from prefect import flow, get_client, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact

from flows.tracking import create_pipeline_run, open_experiment, tracking_uri
from nanochat_core import dvcfile
from nanochat_core.params import load_params

# DVC 3's messages, one per stage it considers.
_PATTERNS = [
    (re.compile(r"^Running stage '([^']+)'"), "ran"),
    (re.compile(r"^Stage '([^']+)' didn't change, skipping"), "unchanged"),
    (re.compile(r"^Stage '([^']+)' is cached - skipping run"), "cached"),
    (re.compile(r"failed to reproduce '([^']+)'"), "failed"),
]


def parse_dvc_line(line):
    """(stage, outcome) for a line of `dvc repro` output that reports a stage, else None."""
    for pattern, outcome in _PATTERNS:
        m = pattern.search(line.strip())
        if m:
            return m.group(1), outcome
    return None


def dvc_changed(targets=(), env=None):
    """Stages `dvc status` reports as changed (those a repro would run), or None if it fails."""
    cmd = [sys.executable, "-m", "dvc", "status", "--json", *(["--with-deps", *targets] if targets else [])]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return None
    try:
        return sorted(json.loads(r.stdout or "{}"))
    except json.JSONDecodeError:
        return None


@flow(name="pipeline", log_prints=True)
def pipeline_flow(targets: list[str] | None = None, force: bool = False, params_path: str = "params.yaml",
                  pull: bool = False, push: bool = False) -> dict:
    """Runs `dvc repro [targets]` with every stage tracked under one MLflow pipeline run.
    pull: first `dvc pull` what the DVC remote has of the targets' inputs (another machine's
    stage outputs), so only what is still out of date runs here; push: `dvc push` the outputs
    afterwards, for the next machine."""
    logger = get_run_logger()
    params = load_params(params_path)  # bad params fail here, before anything runs
    targets = list(targets or [])
    client, experiment_id = open_experiment(params)
    run_id = create_pipeline_run(client, experiment_id, f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}",
                                 {"nanochat.prefect_flow_run_id": str(runtime.flow_run.id),
                                  "nanochat.targets": ",".join(targets) or "all"})
    logger.info(f"MLflow pipeline run {run_id} ({tracking_uri(params)})")

    env = dict(os.environ, NANOCHAT_PIPELINE_RUN_ID=run_id)
    with get_client(sync_client=True) as prefect:
        # This flow's server (a real one, or the temporary one Prefect started for it).
        env["PREFECT_API_URL"] = str(prefect.api_url).rstrip("/")
    with_deps = ["--with-deps", *targets] if targets else []  # the targets' outputs and their upstream's
    if pull:
        _dvc(["pull", "--allow-missing", *with_deps], env, logger)
    before = dvc_changed(targets, env)
    cmd = [sys.executable, "-m", "dvc", "repro", *(["--force"] if force else []), *targets]
    logger.info(f"$ dvc {' '.join(cmd[3:])}  (stages to run: {', '.join(before) if before is not None else 'unknown'})")

    outcomes = {}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
            hit = parse_dvc_line(line)
            if hit:
                outcomes[hit[0]] = hit[1]
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        client.set_terminated(run_id, "KILLED")
        raise
    if rc != 0:
        # A stage that started but is still out of date failed, whatever DVC printed last.
        after = dvc_changed(targets, env)
        for s, o in outcomes.items():
            if o == "ran" and after is not None and s in after:
                outcomes[s] = "failed"
    wanted = [s for s in dvcfile.load() if s in outcomes or not targets or s in targets]
    report = {s: outcomes.get(s, "not run") for s in wanted}

    rows = "\n".join(f"| {s} | {o} |" for s, o in report.items())
    create_markdown_artifact(
        key="pipeline-outcome",
        markdown=f"## dvc repro {'succeeded' if rc == 0 else f'failed (exit {rc})'}\n\n| stage | outcome |\n|---|---|\n"
                 f"{rows}\n\nMLflow pipeline run: `{run_id}`",
        description="what each DVC stage did in this run")
    if rc == 0 and push:
        _dvc(["push", *with_deps], env, logger)
    for s, o in report.items():
        client.set_tag(run_id, f"nanochat.outcome.{s}", o)
    client.set_tag(run_id, "nanochat.dvc_exit_code", str(rc))
    client.set_terminated(run_id, "FINISHED" if rc == 0 else "FAILED")
    logger.info("stage outcomes: " + ", ".join(f"{s}={o}" for s, o in report.items()))
    if rc != 0:
        failed = [s for s, o in report.items() if o == "failed"]
        raise RuntimeError(f"dvc repro exited with {rc}" + (f" at stage {', '.join(failed)}" if failed else "")
                           + "; see the log above, fix it and run again (finished stages are cached)")
    return {"mlflow_run_id": run_id, "outcomes": report}


def _dvc(args, env, logger):
    """A dvc command (pull or push), logged; its failure fails the flow, with DVC's message."""
    logger.info(f"$ dvc {' '.join(args)}")
    r = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=env)
    for line in (r.stdout + r.stderr).splitlines():
        if line.strip():
            logger.info(line)
    if r.returncode != 0:
        raise RuntimeError(f"dvc {args[0]} exited with {r.returncode}: {(r.stderr or r.stdout).strip()[-500:]}; "
                           "check the remote (`dvc remote list`) and that this machine can reach it")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m flows.pipeline", description=pipeline_flow.description)
    ap.add_argument("targets", nargs="*",
                    help=f"stages to reproduce (with their upstream); default all: {', '.join(dvcfile.load())}")
    ap.add_argument("--force", action="store_true", help="rerun the targets even if unchanged")
    ap.add_argument("--pull", action="store_true", help="dvc pull from the DVC remote first")
    ap.add_argument("--push", action="store_true", help="dvc push to the DVC remote afterwards")
    args = ap.parse_args(argv)
    try:
        load_params()
    except (ValueError, FileNotFoundError) as e:
        print(f"pipeline: {e}", file=sys.stderr)
        return 2
    state = pipeline_flow(args.targets, args.force, pull=args.pull, push=args.push, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
