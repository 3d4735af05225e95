"""The orchestration layer: stage flows under Prefect (tasks, states), MLflow runs and lineage
between stages, dvc.yaml's consistency with params.yaml and the stage modules, and (slow)
`dvc repro` end to end and `prefect deploy`."""
import csv
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nanochat_core import dvcfile
from nanochat_core.common import REPO_ROOT, sha256_file

DVC_YAML = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
STAGES = list(DVC_YAML)
TRAINING_CHECKPOINTS = {"pretrain": "checkpoints/base", "midtrain": "checkpoints/mid",
                        "rag_finetune": "checkpoints/rag", "refrag_finetune": "checkpoints/refrag"}


def tiny_params(dst):
    """params.yaml with a small world, so prepare_documents takes a second."""
    p = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    p["documents"]["world"].update(n_people=40, n_cities=6, n_countries=3, n_companies=8, n_universities=3)
    p["documents"]["real_text"]["max_chars"] = 5000
    Path(dst).write_text(yaml.safe_dump(p, sort_keys=False))


# ----------------------------------------------------------------------------- dvc.yaml

def _entries(items):
    for it in items or []:
        yield from (it.items() if isinstance(it, dict) else [(it, {})])


def test_dvc_yaml_stages_and_commands():
    assert STAGES == ["prepare_documents", "build_kb", "pretrain", "midtrain", "rag_finetune", "refrag_finetune",
                      "evaluate"]
    for name, st in DVC_YAML.items():
        assert " ".join(st["cmd"].split()).startswith(f"python -m flows.stage {name} --"), name
    assert importlib.util.find_spec("flows.stage") is not None
    r = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()] == list(STAGES)


def test_dvc_params_exist_and_match_the_stage_sections():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for name, st in DVC_YAML.items():
        keys = [k for k, _ in _entries(st.get("params"))]
        for key in keys:
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: params key {key} not in params.yaml"
                node = node[part]
        assert keys == dvcfile.sections(name, DVC_YAML), name  # the flow logs exactly these to MLflow


def test_stage_parents_come_from_the_dvc_graph():
    parents = {s: dvcfile.parents(s, DVC_YAML) for s in STAGES}
    assert parents == {
        "prepare_documents": [], "build_kb": ["prepare_documents"], "pretrain": ["prepare_documents"],
        "midtrain": ["prepare_documents", "build_kb", "pretrain"],
        "rag_finetune": ["prepare_documents", "build_kb", "pretrain", "midtrain"],
        "refrag_finetune": ["prepare_documents", "build_kb", "pretrain", "rag_finetune"],
        "evaluate": ["prepare_documents", "build_kb", "pretrain", "midtrain", "rag_finetune", "refrag_finetune"]}


def test_dvc_outs_follow_the_file_contracts():
    for name, st in DVC_YAML.items():
        outs = dict(_entries(st.get("outs")))
        deps = st.get("deps", [])
        # the lineage record is an out of its stage and a dep of none (it changes every run)
        assert f"data/lineage/{name}.json" in outs
        assert not any(d.startswith("data/lineage") for d in deps)
        if name in TRAINING_CHECKPOINTS:
            assert outs[TRAINING_CHECKPOINTS[name]].get("persist") is True  # resume after a kill
            plots = dict(_entries(st.get("plots")))
            assert plots[f"reports/plots/train_loss_{name}.csv"] == {"cache": False, "x": "step", "y": "loss"}
        # every stage depends on its own adapter and the shared one
        assert f"steps/{name}.py" in deps and "steps/common.py" in deps
    assert "checkpoints/tokenizer" in dict(_entries(DVC_YAML["pretrain"]["outs"]))
    metrics = dict(_entries(DVC_YAML["evaluate"]["metrics"]))
    assert metrics["reports/metrics.json"] == {"cache": False}
    assert dict(_entries(DVC_YAML["evaluate"]["outs"]))["reports/eval.json"] == {"cache": False}  # every figure
    assert "reports/plots/eval_by_type.csv" in dict(_entries(DVC_YAML["evaluate"]["outs"]))
    # the per-type chart is a top-level plot: one bar per mode, columns of that CSV
    top = {k: v for p in yaml.safe_load(open(REPO_ROOT / "dvc.yaml"))["plots"] for k, v in p.items()}
    assert top["eval_by_type"]["y"] == {"reports/plots/eval_by_type.csv": ["closed_book", "rag", "refrag"]}


def _imports(path):
    """The modules a file imports, `from a import b` as both a and a.b."""
    import ast
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return out


def test_evaluation_only_code_is_a_dep_of_evaluate_alone():
    # Editing the scoring or Table 1 must retrain nothing: no training stage lists these files,
    # and no code a training stage lists imports the report module (DVC would not see the edit).
    only_eval = {"nanochat_core/evaluation.py", "nanochat_core/eval_report.py"}
    for name, st in DVC_YAML.items():
        deps = set(st.get("deps", []))
        if name == "evaluate":
            assert only_eval <= deps
            continue
        assert not only_eval & deps, name
        code = [f for d in deps if d.startswith(("nanochat_core", "steps/"))
                for f in ([REPO_ROOT / d] if d.endswith(".py") else (REPO_ROOT / d).rglob("*.py"))]
        assert not [f for f in code if "nanochat_core.eval_report" in _imports(f)], name


def test_dvc_deps_exist():
    # `dvc repro` fails on a missing dependency; this names it first.
    missing = sorted({d for st in DVC_YAML.values() for d in st.get("deps", [])
                      if not d.startswith(("data/", "checkpoints/")) and not (REPO_ROOT / d).exists()})
    assert not missing, f"dvc.yaml deps that do not exist: {missing}"


def test_dvc_analytics_off_and_bytecode_ignored():
    assert "analytics = false" in (REPO_ROOT / ".dvc" / "config").read_text()
    assert "__pycache__/" in (REPO_ROOT / ".dvcignore").read_text()


def test_dvc_output_parsing():
    from flows.pipeline import parse_dvc_line
    assert parse_dvc_line("Running stage 'build_kb':") == ("build_kb", "ran")
    assert parse_dvc_line("Stage 'prepare_documents' didn't change, skipping") == ("prepare_documents", "unchanged")
    assert parse_dvc_line("Stage 'pretrain' is cached - skipping run, checking out outputs") == ("pretrain", "cached")
    assert parse_dvc_line("ERROR: failed to reproduce 'midtrain': failed to run: python -m flows.stage midtrain, "
                          "exited with 1") == ("midtrain", "failed")
    assert parse_dvc_line("Updating lock file 'dvc.lock'") is None


# ----------------------------------------------------------------------------- stage flows

@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """prepare_documents then build_kb as stage flows against a temporary Prefect server and
    MLflow store, in a scratch working directory."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.stage import stage_flow
    ws = tmp_path_factory.mktemp("ws")
    tiny_params(ws / "params.yaml")
    shutil.copy(REPO_ROOT / "dvc.yaml", ws / "dvc.yaml")
    mp = pytest.MonkeyPatch()
    mp.chdir(ws)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ws}/mlflow.db")
    mp.delenv("NANOCHAT_PIPELINE_RUN_ID", raising=False)
    try:
        with prefect_test_harness(server_startup_timeout=120):
            states = {s: stage_flow(s, dvcfile.stage_paths(s, DVC_YAML), return_state=True)
                      for s in ("prepare_documents", "build_kb")}
            task_runs = {s: _task_runs(st.state_details.flow_run_id) for s, st in states.items()}
        yield {"ws": ws, "states": states, "task_runs": task_runs}
    finally:
        mp.undo()


def _task_runs(flow_run_id, timeout=60):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    deadline = time.time() + timeout
    with get_client(sync_client=True) as client:
        while True:  # task run states reach the server as events, a moment after the flow ends
            trs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            got = {tr.name.rsplit("-", 1)[0]: tr.state.type.value for tr in trs if tr.state}
            if (len(got) == 3 and all(v == "COMPLETED" for v in got.values())) or time.time() > deadline:
                return got


def _mlflow_runs(ws):
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{ws}/mlflow.db")
    exp = client.get_experiment_by_name("nanochat-rag")
    return client, {r.data.tags.get("nanochat.stage", "pipeline"): r for r in client.search_runs([exp.experiment_id])}


def test_stage_flow_tasks_completed(ran):
    for stage, state in ran["states"].items():
        assert state.is_completed(), f"{stage}: {state}"
        assert ran["task_runs"][stage] == {"load": "COMPLETED", "run": "COMPLETED", "save": "COMPLETED"}
    ws = ran["ws"]
    for path in ("data/documents.jsonl", "data/qa/train.jsonl", "data/corpus/shard_00000.jsonl",
                 "data/kb/manifest.json", "reports/prepare_documents.json", "reports/build_kb.json"):
        assert (ws / path).is_file(), path


def test_stage_runs_nest_under_one_pipeline_run(ran):
    client, runs = _mlflow_runs(ran["ws"])
    assert set(runs) == {"pipeline", "prepare_documents", "build_kb"}  # one run per stage, one parent
    pipeline = runs["pipeline"]
    assert pipeline.data.tags["nanochat.run_type"] == "pipeline"
    for stage in ("prepare_documents", "build_kb"):
        r = runs[stage]
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
        assert r.data.tags["nanochat.prefect_flow_run_id"] == str(ran["states"][stage].state_details.flow_run_id)
        for tag in ("nanochat.git_commit", "nanochat.data_hashes", "nanochat.parent_run_ids",
                    "nanochat.parent_checkpoint_hash", "nanochat.output_hashes"):
            assert tag in r.data.tags, (stage, tag)
    prep = runs["prepare_documents"]
    assert prep.data.params["documents.world.n_people"] == "40"
    assert prep.data.metrics["documents.count"] > 0
    assert "prepare_documents.json" in [a.path for a in client.list_artifacts(prep.info.run_id)]
    assert runs["build_kb"].data.params["kb.bm25.k1"] == "1.2"


def test_build_kb_links_to_prepare_documents(ran):
    ws = ran["ws"]
    _, runs = _mlflow_runs(ws)
    prep, kb = runs["prepare_documents"], runs["build_kb"]
    assert kb.data.tags["nanochat.parent_run_ids"] == prep.info.run_id
    assert kb.data.tags["nanochat.parent_stages"] == "prepare_documents"
    hashes = json.loads(kb.data.tags["nanochat.data_hashes"])
    assert hashes == {"data/documents.jsonl": sha256_file(ws / "data" / "documents.jsonl")}
    rec = json.loads((ws / "data" / "lineage" / "prepare_documents.json").read_text())
    assert rec["mlflow_run_id"] == prep.info.run_id
    assert rec["outputs"]["data/documents.jsonl"] == hashes["data/documents.jsonl"]


def test_bad_params_fail_before_prefect_starts(tmp_path):
    p = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    p["kb"]["retreivers"] = p["kb"].pop("retrievers")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    args = [w for k, v in dvcfile.stage_paths("build_kb", DVC_YAML).items() for w in (f"--{k}", v)]
    r = subprocess.run([sys.executable, "-m", "flows.stage", "build_kb", *args], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "kb.retreivers" in r.stderr and "did you mean `retrievers`" in r.stderr
    assert "Starting temporary server" not in r.stderr  # refused before any flow (no wall-clock bound: flaky under load)
    assert not (tmp_path / "mlflow.db").exists()


# ----------------------------------------------------------------------------- slow: end to end

def _repo_copy(dst):
    """A throwaway git+DVC repository with this project's code and a tiny params.yaml."""
    for name in ("nanochat_core", "steps", "flows", "dvc.yaml", ".dvcignore", "prefect.yaml"):
        src = REPO_ROOT / name
        (shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, dst / name))
    tiny_params(dst / "params.yaml")
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "config", "core.analytics", "false"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dst, check=True, env=env, capture_output=True)


@pytest.mark.slow
def test_dvc_repro_end_to_end(tmp_path):
    _repo_copy(tmp_path)
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / ".prefect"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])  # stage cmds run `python`
    env.pop("NANOCHAT_PIPELINE_RUN_ID", None)
    dvc = [sys.executable, "-m", "dvc"]
    r = subprocess.run([*dvc, "repro", "build_kb"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # A second repro is a no-op: the lineage record changing per run does not matter.
    r = subprocess.run([*dvc, "repro", "build_kb"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "Running stage" not in r.stdout and r.returncode == 0, r.stdout
    _, runs = _mlflow_runs(tmp_path)
    assert runs["build_kb"].data.tags["mlflow.parentRunId"] == runs["prepare_documents"].data.tags["mlflow.parentRunId"]
    assert runs["build_kb"].data.tags["nanochat.parent_run_ids"] == runs["prepare_documents"].info.run_id
    # The pipeline flow: a kb param changes, so only build_kb runs, under a new pipeline run.
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    p["kb"]["bm25"]["k1"] = 0.9
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "flows.pipeline", "build_kb"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stage outcomes: prepare_documents=unchanged, build_kb=ran" in r.stdout + r.stderr
    client, _ = _mlflow_runs(tmp_path)
    exp = client.get_experiment_by_name("nanochat-rag")
    pipe = client.search_runs([exp.experiment_id], "tags.`nanochat.outcome.build_kb` = 'ran'")
    assert len(pipe) == 1 and pipe[0].info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{pipe[0].info.run_id}'")
    assert [c.data.tags["nanochat.stage"] for c in children] == ["build_kb"]


def micro_params(dst):
    """tiny_params plus a model and step counts small enough for the whole pipeline in ~2 min."""
    tiny_params(dst)
    p = yaml.safe_load(Path(dst).read_text())
    p["documents"]["real_text"]["max_chars"] = 60000  # enough real text for the tokenizer
    p["documents"]["world"]["rl_fraction"] = 0.15  # RL people: RL's questions come from data/qa/rl.jsonl
    p["tokenizer"]["vocab_size"] = p["model"]["vocab_size"] = 512
    p["model"].update(n_layer=2, n_embd=32, n_head=2, n_kv_head=2, block_pattern="TM", headdim=16, sequence_len=64)
    for s in ("pretrain", "midtrain", "rag_finetune", "refrag_finetune"):
        p[s].update(steps=4, batch_size=2, checkpoint_every=2, eval_every=0, log_every=2)
    p["refrag_finetune"].update(rl_steps=2, rl_eval_every=1, rl_group_size=2, rl_questions_per_step=2,
                                rl_max_new_tokens=4, max_hops=2)
    p["evaluate"].update(max_questions_per_type=2, batch_size=8, max_new_tokens=4, max_hops=2)
    Path(dst).write_text(yaml.safe_dump(p, sort_keys=False))


def _assert_lineage_reaches_the_documents(client, runs, root):
    """Following parent links from the REFRAG run reaches the run that wrote
    data/documents.jsonl, whose recorded hash is the file's."""
    chain, run = [], runs["refrag_finetune"]
    while True:
        chain.append(run.data.tags["nanochat.stage"])
        parents = [client.get_run(i) for i in run.data.tags["nanochat.parent_run_ids"].split(",") if i]
        if not parents:
            break
        # follow the model's line: the nearest parent that trained a checkpoint (the tokenizer's
        # stage, pretrain, is a parent of every training stage too)
        trained = [p for p in parents if p.data.tags.get("nanochat.checkpoint_hash")]
        run = max(trained or parents, key=lambda p: STAGES.index(p.data.tags["nanochat.stage"]))
        if chain[-1] == "pretrain":
            run = next(p for p in parents if p.data.tags["nanochat.stage"] == "prepare_documents")
    assert chain == ["refrag_finetune", "rag_finetune", "midtrain", "pretrain", "prepare_documents"]
    outputs = json.loads(run.data.tags["nanochat.output_hashes"])
    from nanochat_core.common import sha256_file
    assert outputs["data/documents.jsonl"] == sha256_file(root / "data" / "documents.jsonl")
    return run


@pytest.mark.pipeline
def test_full_pipeline_lineage_reaches_the_documents(tmp_path):
    # Its own marker (~3 min), run by .ci/run as its own step: the one test of every stage for real.
    """All seven stages under one `dvc repro`: one MLflow run per stage under one pipeline
    run; following parent links from the REFRAG run reaches the run that wrote
    data/documents.jsonl, whose recorded hash is the file's; a second repro is a no-op; editing
    scoring code (evaluation.py) or an evaluate param reruns only evaluate."""
    _repo_copy(tmp_path)
    micro_params(tmp_path / "params.yaml")
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / ".prefect"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])  # stage cmds run `python`
    env.pop("NANOCHAT_PIPELINE_RUN_ID", None)
    dvc = [sys.executable, "-m", "dvc"]
    r = subprocess.run([*dvc, "repro"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    client, runs = _mlflow_runs(tmp_path)
    assert set(STAGES) <= set(runs)
    assert len({runs[s].data.tags["mlflow.parentRunId"] for s in STAGES}) == 1
    _assert_lineage_reaches_the_documents(client, runs, tmp_path)
    # `dvc metrics show` gets the headline alone (one readable row), the same numbers eval.json holds;
    # the failure split accounts for every REFRAG multi-hop answer, in eval.json and report.md.
    m = json.loads((tmp_path / "reports" / "eval.json").read_text())
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == {"headline": m["headline"]}
    assert m["headline"]["refrag_em_2hop"] == m["results"]["refrag"]["refrag"]["2hop"]["em"]
    shown = subprocess.run([*dvc, "metrics", "show", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "reports/metrics.json" in shown.stdout and '"results"' not in shown.stdout and '"by_relation"' not in shown.stdout
    assert m["final_doc"]
    for ck, by_type in m["final_doc"].items():
        assert set(by_type) == {"2hop", "3hop"}
        for t, cats in by_type.items():
            assert sum(c["n"] for c in cats.values()) == m["results"][ck]["refrag"][t]["n"] > 0, (ck, t)
    assert "## Where REFRAG's multi-hop answers fail" in (tmp_path / "reports" / "report.md").read_text()
    # EM by relation chain covers every answer of every checkpoint x mode x type, and adds up to its EM.
    for ck, modes in m["results"].items():
        for mode, by_type in modes.items():
            for t, agg in by_type.items():
                rels = m["by_relation"][ck][mode][t]
                assert sum(r["n"] for r in rels.values()) == agg["n"], (ck, mode, t)
                assert sum(r["em"] * r["n"] for r in rels.values()) == pytest.approx(agg["em"] * agg["n"]), (ck, mode, t)
    assert "## EM by relation chain" in (tmp_path / "reports" / "report.md").read_text()
    # benchmarks.rl_runs reruns RL outside DVC: from the same warm-up and rl_seed its rollouts get
    # the pipeline's rewards step by step and it keeps the same step; it answers evaluate's test
    # questions with evaluate's answers (the micro model's EM is mostly 0, so answers are compared).
    from benchmarks import rl_runs
    rl_runs.main(["--root", str(tmp_path), "--out", str(tmp_path / "rl_runs.json")])
    rr = json.loads((tmp_path / "rl_runs.json").read_text())
    run = rr["runs"][0]
    stage_summary = json.loads((tmp_path / "reports" / "refrag_finetune.json").read_text())
    assert run["kept_step"] == stage_summary["rl_best_step"]
    rl_qs = (tmp_path / "data" / "qa" / "rl.jsonl").read_text().splitlines()
    assert stage_summary["rl_question_pool"] == "rl" and 0 < stage_summary["rl_train_questions"] <= len(rl_qs)
    with open(tmp_path / "reports" / "plots" / "refrag_rl.csv") as f:
        logged = [float(row["reward"]) for row in csv.DictReader(f) if row["reward"]]
    assert len(logged) == 2 and [h["reward"] for h in run["history"] if "reward" in h] == pytest.approx(logged, abs=1e-6)
    preds = [json.loads(x) for x in (tmp_path / "reports" / "predictions.jsonl").read_text().splitlines()]
    for ck, answers in (("refrag_sft", rr["warm_up_predictions"]), ("refrag", run["predictions"])):
        assert answers == {p["id"]: p["prediction"] for p in preds if p["checkpoint"] == ck and p["mode"] == "refrag"
                           and p["type"] in rl_runs.TYPES and not p["id"].startswith("test-known")}, ck
    for t in rr["warm_up"]:
        assert rr["warm_up"][t]["em"] == m["results"]["refrag_sft"]["refrag"][t]["em"], t
        assert run["test"][t]["em"] == m["results"]["refrag"]["refrag"][t]["em"], t
        assert rr["warm_up_rag_mode"][t]["em"] == m["results"]["refrag_sft"]["rag"][t]["em"], t
        assert run["test_rag_mode"][t]["em"] == m["results"]["refrag"]["rag"][t]["em"], t
    r = subprocess.run([*dvc, "repro"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "Running stage" not in r.stdout, r.stdout
    # Editing scoring retrains nothing: after an edit to evaluation.py, dvc status lists evaluate
    # alone. (metrics.py's answer matching is also the RL reward's, so it is a refrag_finetune dep.)
    with open(tmp_path / "nanochat_core" / "evaluation.py", "a") as f:
        f.write("\n# an edit to scoring\n")
    r = subprocess.run([*dvc, "status", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(r.stdout)) == ["evaluate"], r.stdout
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    p["evaluate"]["max_new_tokens"] = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    r = subprocess.run([*dvc, "repro"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert [ln.split("'")[1] for ln in r.stdout.splitlines() if ln.startswith("Running stage")] == ["evaluate"]


@pytest.mark.slow
def test_pipeline_trains_under_torchrun_with_two_ranks(tmp_path):
    """distributed.nproc_per_node: 2 on CPU (gloo): every training stage and evaluate run under
    torchrun; MLflow still holds one run per stage (the flow's, not one per rank) with rank 0's
    step metrics, and the lineage reaches the documents."""
    _repo_copy(tmp_path)
    micro_params(tmp_path / "params.yaml")
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    p["distributed"]["nproc_per_node"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / ".prefect"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("NANOCHAT_PIPELINE_RUN_ID", None)
    r = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    client, runs = _mlflow_runs(tmp_path)
    exp = client.get_experiment_by_name("nanochat-rag")
    per_stage = {}
    for run in client.search_runs([exp.experiment_id]):
        stage = run.data.tags.get("nanochat.stage", "pipeline")
        per_stage[stage] = per_stage.get(stage, 0) + 1
    assert per_stage == {s: 1 for s in ["pipeline", *STAGES]}, per_stage
    for s in ("pretrain", "midtrain", "rag_finetune", "refrag_finetune"):
        summary = json.loads((tmp_path / "reports" / f"{s}.json").read_text())
        assert summary["world_size"] == 2, s
        loss = client.get_metric_history(runs[s].info.run_id, "loss")
        assert sorted(m.step for m in loss) == list(range(1, 5)), s  # rank 0's steps, each once
    assert client.get_metric_history(runs["refrag_finetune"].info.run_id, "rl_reward")
    _assert_lineage_reaches_the_documents(client, runs, tmp_path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_prefect_deploy_all(tmp_path):
    """prefect.yaml is valid: a local server accepts both deployments on a process work pool."""
    for name in ("nanochat_core", "steps", "flows", "prefect.yaml", "params.yaml"):
        src = REPO_ROOT / name
        (shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, tmp_path / name))
    port = _free_port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / ".prefect"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PWD=str(tmp_path))
    prefect = [sys.executable, "-m", "prefect"]
    server = subprocess.Popen([*prefect, "server", "start", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx
        for _ in range(120):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        def run(*a):
            return subprocess.run([*prefect, *a], cwd=tmp_path, env=env, capture_output=True, text=True)
        r = run("work-pool", "create", "nanochat-local", "--type", "process")
        assert r.returncode == 0, r.stdout + r.stderr
        r = run("--no-prompt", "deploy", "--all")
        assert r.returncode == 0, r.stdout + r.stderr
        r = run("deployment", "ls")
        assert "pipeline/nanochat-pipeline" in r.stdout and "stage/nanochat-stage" in r.stdout, r.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
