"""A stage's `run` under `torchrun`, for params.distributed.nproc_per_node x nnodes > 1.

flows/stage.py calls launch() in place of the step's run(): the Prefect flow and the MLflow run
stay in the launching process, and torchrun starts one process per rank here:

    python -m torch.distributed.run --nproc_per_node N [--standalone | --nnodes ...] \\
        -m steps.torchrun <stage> <job dir>

Every rank loads the stage's inputs and runs it (the core splits the work: train.py draws each
rank's own micro-batches, rl.py splits the rollouts, evaluation.py the questions). Rank 0 alone
writes checkpoints, and its log(metrics, step) calls go to <job dir>/metrics.jsonl, which the
launcher forwards to MLflow as they come. Rank 0's result comes back through <job dir>/result.pt
for the step's save(), which runs in the launcher as usual.
"""
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DISTRIBUTED_STAGES = ("pretrain", "midtrain", "rag_finetune", "refrag_finetune", "evaluate")


def world_size(params):
    d = params["distributed"]
    return d["nproc_per_node"] * d["nnodes"]


def command(params, stage, job_dir):
    d = params["distributed"]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={d['nproc_per_node']}"]
    if d["nnodes"] == 1:
        cmd.append("--standalone")  # a free local port, no rendezvous server
    else:
        cmd += [f"--nnodes={d['nnodes']}", f"--node_rank={d['node_rank']}", f"--master_addr={d['master_addr']}",
                f"--master_port={d['master_port']}"]
    return cmd + ["-m", "steps.torchrun", stage, str(job_dir)]


def launch(stage, params, params_path, paths, log, ctx):
    """Run `stage` under torchrun; forwards rank 0's log calls to `log` while it runs and
    returns rank 0's result. A failed rank fails the stage, naming the exit status (the ranks'
    tracebacks are above it in the output)."""
    with tempfile.TemporaryDirectory(prefix=f"nanochat-{stage}-") as tmp:
        job = Path(tmp)
        (job / "job.json").write_text(json.dumps({"params_path": str(params_path), "ctx": ctx,
                                                  "paths": {k: str(v) for k, v in paths.items()}}))
        metrics = job / "metrics.jsonl"
        metrics.touch()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(_threads(params)))}
        proc = subprocess.Popen(command(params, stage, job), env=env)
        with open(metrics) as f:
            pending = ""
            while True:
                done = proc.poll() is not None
                pending += f.read()
                *lines, pending = pending.split("\n")  # a line still being written waits for its end
                for line in filter(None, lines):
                    rec = json.loads(line)
                    log(rec["metrics"], rec["step"])
                if done:
                    break
                time.sleep(0.5)
        if proc.returncode != 0:
            raise RuntimeError(f"{stage}: torchrun exited with status {proc.returncode} "
                               f"(distributed.nproc_per_node={params['distributed']['nproc_per_node']}); "
                               "the failing rank's traceback is above")
        return torch.load(job / "result.pt", weights_only=False)


def _threads(params):
    # The machine's cores shared among this node's ranks (torch would give each rank all of them).
    return max(1, (os.cpu_count() or 1) // params["distributed"]["nproc_per_node"])


def main(stage, job_dir):
    import torch.distributed as dist

    from nanochat_core.common import atomic_write_bytes
    from nanochat_core.params import load_params
    from nanochat_core.train import setup_distributed
    job_dir = Path(job_dir)
    job = json.loads((job_dir / "job.json").read_text())
    rank, _, _ = setup_distributed()
    params = load_params(job["params_path"])
    paths = {k: Path(v) for k, v in job["paths"].items()}
    step = importlib.import_module(f"steps.{stage}")

    def log(metrics, step_no):
        if rank == 0:
            with open(job_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"metrics": metrics, "step": step_no}) + "\n")

    result = step.run(step.load(params, paths), params, paths, log, job["ctx"])
    if rank == 0:
        import io
        buf = io.BytesIO()
        torch.save(result, buf)
        atomic_write_bytes(job_dir / "result.pt", buf.getvalue())
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
