"""Where each concern lives: paths only in dvc.yaml (and the adapters that read it), no
environment variables as hidden arguments of the core, short core files, and every path a
stage's command passes declared to DVC."""
import ast
import io
import re
import subprocess
import tokenize

import yaml

from nanochat_core import dvcfile
from nanochat_core.common import REPO_ROOT

PIPELINE_PATH = re.compile(r"^(\./)?(data|checkpoints|reports)/")
# The only variables the core may read: running offline with telemetry off, and thread counts.
ALLOWED_ENV = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MLFLOW_DISABLE_TELEMETRY", "PREFECT_SERVER_ANALYTICS_ENABLED",
               "DO_NOT_TRACK", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "JAX_PLATFORMS"}  # third-party libraries' own switches (JAX: kept off the GPU by retrieval/bm25.py)


def _python_files():
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return [REPO_ROOT / f for f in out if (REPO_ROOT / f).is_file()]


def path_literals(source):
    """(line, text) of every string literal that names a pipeline path."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.STRING:
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):  # f-strings: look at their literal text
                value = re.sub(r"['\"]+$", "", re.sub(r"^[rbfuRBFU]*['\"]+", "", tok.string))
            if isinstance(value, str) and PIPELINE_PATH.match(value):
                found.append((tok.start[0], value))
    return found


def env_reads(source):
    """(line, name or None) of every environment read: os.environ[...] / .get / .setdefault /
    os.getenv; None where the name is not a literal (or the whole environment is used)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "environ":
            found.append((node.lineno, None))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "getenv":
            arg = node.args[0] if node.args else None
            found.append((node.lineno, arg.value if isinstance(arg, ast.Constant) else None))
    named = {}
    for node in ast.walk(ast.parse(source)):
        # os.environ.get("X") / os.environ["X"] / os.environ.setdefault("X", ...): name the variable
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                getattr(node.func.value, "attr", None) == "environ" and node.args:
            target = node.args[0]
        elif isinstance(node, ast.Subscript) and getattr(node.value, "attr", None) == "environ":
            target = node.slice
        if target is not None and isinstance(target, ast.Constant):
            named[node.lineno] = target.value
    return sorted((ln, named.get(ln, name)) for ln, name in found)


def test_the_checks_catch_what_they_look_for():
    assert path_literals('x = Path("data/kb")\ny = f"reports/{s}.json"\nz = "data"') == [(1, "data/kb"), (2, "reports/{s}.json")]
    src = 'import os\na = os.environ.get("NANOCHAT_X")\nb = os.environ["HF_HUB_OFFLINE"]\nc = os.getenv("Y")\nd = dict(os.environ)'
    assert env_reads(src) == [(2, "NANOCHAT_X"), (3, "HF_HUB_OFFLINE"), (4, "Y"), (5, None)]


def test_no_pipeline_path_outside_dvc_yaml_and_its_adapters():
    bad = []
    for f in _python_files():
        rel = f.relative_to(REPO_ROOT).as_posix()
        if rel.startswith(("tests/", "steps/", "flows/")):
            continue
        bad += [f"{rel}:{ln}: {text!r}" for ln, text in path_literals(f.read_text(encoding="utf-8"))]
    assert not bad, "pipeline paths belong in dvc.yaml (stage commands pass them):\n" + "\n".join(bad)


def test_the_core_reads_no_environment_variable_as_a_hidden_argument():
    bad = []
    for f in sorted((REPO_ROOT / "nanochat_core").rglob("*.py")):
        for ln, name in env_reads(f.read_text(encoding="utf-8")):
            if name not in ALLOWED_ENV:
                bad.append(f"{f.relative_to(REPO_ROOT)}:{ln}: {name or 'os.environ'}")
    assert not bad, "run context and settings reach the core as arguments:\n" + "\n".join(bad)


def test_no_core_file_is_over_400_lines():
    long = {str(f.relative_to(REPO_ROOT)): n for f in (REPO_ROOT / "nanochat_core").rglob("*.py")
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long


def test_every_command_path_is_declared_to_dvc():
    """A path a stage's command passes is one of its deps or outs (metrics, plots), so DVC
    hashes what the stage reads and caches what it writes; and every data dep is passed."""
    stages = dvcfile.load(REPO_ROOT / "dvc.yaml")
    for name, entry in stages.items():
        paths = dvcfile.stage_paths(name, stages)
        declared = set(dvcfile.listed(entry.get("deps"))) | set(dvcfile.outputs(name, stages))
        assert set(paths.values()) <= declared, (name, set(paths.values()) - declared)
        data_deps = [d for d in dvcfile.listed(entry.get("deps")) if not d.startswith(("nanochat_core", "steps/"))]
        assert set(data_deps) <= set(paths.values()), (name, "data deps the command does not pass")
        assert paths["lineage"] == f"data/lineage/{name}.json"


def test_a_malformed_command_is_refused_with_its_words():
    import pytest
    with pytest.raises(ValueError, match="expected --name path pairs"):
        dvcfile.parse_args(["--qa", "data/qa", "stray"])
    with pytest.raises(ValueError, match="--qa given twice"):
        dvcfile.parse_args(["--qa", "a", "--qa", "b"])
    with pytest.raises(ValueError, match="unknown stage 'pretrian'"):
        dvcfile.stage_paths("pretrian", yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
