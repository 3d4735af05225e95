"""Stages on two machines (slow, ~3 min), with every process on this one: one Prefect server,
one work pool with a queue and a worker per "machine" (a checkout each), one DVC remote on a
local directory and one MLflow tracking server. Machine A runs prepare_documents and build_kb
and pushes; machine B pulls and runs pretrain alone. docs/orchestration.md gives the same
recipe by hand."""
import os
import subprocess
import sys
import time

import pytest
from test_flows import _free_port, _repo_copy, micro_params

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _wait_http(url, proc, what, timeout=180):
    import httpx
    for _ in range(timeout):
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{what} did not answer at {url}")


@pytest.mark.slow
def test_build_kb_on_one_worker_and_pretrain_on_another(tmp_path):
    a, b, remote = tmp_path / "machine-a", tmp_path / "machine-b", tmp_path / "dvc-remote"
    a.mkdir()
    _repo_copy(a)
    micro_params(a / "params.yaml")
    pport, mport = _free_port(), _free_port()
    env = dict(os.environ, **GIT_ENV, PREFECT_HOME=str(tmp_path / ".prefect"),
               PREFECT_API_URL=f"http://127.0.0.1:{pport}/api", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mport}",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("NANOCHAT_PIPELINE_RUN_ID", None)

    def sh(cwd, *cmd, check=True):
        r = subprocess.run(cmd, cwd=cwd, env={**env, "PWD": str(cwd)}, capture_output=True, text=True, timeout=900)
        assert not check or r.returncode == 0, f"{' '.join(cmd)}:\n{(r.stdout + r.stderr)[-4000:]}"
        return r
    py, prefect = sys.executable, [sys.executable, "-m", "prefect"]
    sh(a, py, "-m", "dvc", "remote", "add", "-d", "store", str(remote))
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-qm", "params and the DVC remote")
    sh(tmp_path, "git", "clone", "-q", str(a), str(b))  # machine B's checkout of the same repository

    procs = []
    try:
        def start(cwd, *cmd, log):
            procs.append(subprocess.Popen(cmd, cwd=cwd, env={**env, "PWD": str(cwd)}, stdout=open(tmp_path / log, "w"),
                                          stderr=subprocess.STDOUT))
            return procs[-1]
        server = start(tmp_path, *prefect, "server", "start", "--port", str(pport), log="prefect-server.log")
        mlflow = start(tmp_path, py, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mport),
                       "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
                       "--artifacts-destination", str(tmp_path / "mlartifacts"), log="mlflow-server.log")
        _wait_http(f"http://127.0.0.1:{pport}/api/health", server, "the Prefect server")
        _wait_http(f"http://127.0.0.1:{mport}/health", mlflow, "the MLflow server")
        sh(tmp_path, *prefect, "work-pool", "create", "nanochat-two", "--type", "process")
        for m, cwd in (("machine-a", a), ("machine-b", b)):
            # Deployed from each checkout: prefect.yaml's pull step runs the flow in the directory it was deployed from.
            sh(cwd, *prefect, "--no-prompt", "deploy", "flows/pipeline.py:pipeline_flow", "-n", m, "-p", "nanochat-two",
               "-q", m)
            start(cwd, *prefect, "worker", "start", "--pool", "nanochat-two", "--work-queue", m, log=f"worker-{m}.log")

        def run_on(m, cwd, *params):
            r = sh(cwd, *prefect, "deployment", "run", f"pipeline/{m}", *params, "--watch", "--watch-timeout", "900",
                   check=False)
            assert r.returncode == 0 and "Completed" in r.stdout, (r.stdout + r.stderr)[-3000:] + "\n" + \
                (tmp_path / f"worker-{m}.log").read_text()[-4000:]
        run_on("machine-a", a, "-p", 'targets=["build_kb"]', "-p", "push=true")
        assert not (b / "data").exists()
        # What A reproduced reaches B through git (dvc.lock and the uncached metrics in reports/),
        # its outputs through the DVC remote.
        sh(a, "git", "add", "dvc.lock", "reports")
        sh(a, "git", "commit", "-qm", "build_kb on machine A")
        sh(b, "git", "pull", "-q")
        run_on("machine-b", b, "-p", 'targets=["pretrain"]', "-p", "pull=true")

        from mlflow import MlflowClient
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("nanochat-rag")
        runs = client.search_runs([exp.experiment_id])
        pipes = {r.data.tags["nanochat.targets"]: r for r in runs if r.data.tags.get("nanochat.run_type") == "pipeline"}
        assert set(pipes) == {"build_kb", "pretrain"}
        tags_a, tags_b = pipes["build_kb"].data.tags, pipes["pretrain"].data.tags
        assert tags_a["nanochat.outcome.prepare_documents"] == "ran" and tags_a["nanochat.outcome.build_kb"] == "ran"
        # B pulled A's outputs, so it reran nothing of A's and trained pretrain alone.
        assert tags_b["nanochat.outcome.prepare_documents"] == "unchanged", tags_b
        assert tags_b["nanochat.outcome.pretrain"] == "ran", tags_b
        stage_runs = {r.data.tags["nanochat.stage"]: r for r in runs if "nanochat.stage" in r.data.tags}
        assert sorted(stage_runs) == ["build_kb", "prepare_documents", "pretrain"]
        assert stage_runs["pretrain"].data.tags["mlflow.parentRunId"] == pipes["pretrain"].info.run_id
        # The lineage crosses machines: B's pretrain names A's prepare_documents run as its parent.
        parents = stage_runs["pretrain"].data.tags["nanochat.parent_run_ids"].split(",")
        assert stage_runs["prepare_documents"].info.run_id in parents
        assert (b / "checkpoints" / "base").is_dir() and not (a / "checkpoints" / "base").exists()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
