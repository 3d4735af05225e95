"""params.yaml validation and presets: every kind of bad value is refused with its key path."""
import copy
from pathlib import Path

import pytest
import yaml

from nanochat_core import params as P
from nanochat_core import presets as PR
from nanochat_core.common import REPO_ROOT

PARAMS = REPO_ROOT / "params.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(PARAMS.read_text())


def _keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, prefix + k + ".")
    return out


def _with(raw, path, value):
    p = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node = p
    for k in parents:
        node = node[k]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return p


_DELETE = object()


def _refused(params, *must_contain):
    with pytest.raises(ValueError) as e:
        P.validate_params(params)
    for s in must_contain:
        assert s in str(e.value), f"{s!r} not in: {e.value}"
    return str(e.value)


def test_shipped_params_validate_and_mirror_defaults(raw):
    params = P.load_params(PARAMS)
    assert params["model"]["vocab_size"] == params["tokenizer"]["vocab_size"]
    # DEFAULTS is the schema: the same keys at every depth as params.yaml.
    assert _keys(raw) == _keys(P.DEFAULTS)
    assert isinstance(params["pretrain"]["matrix_lr"], float)


def test_schema_defaults_equal_params_yaml_key_for_key(raw):
    """The one schema: every default (the value a missing-key error suggests) is the value
    params.yaml ships, so no second set of defaults can drift from it."""
    want, have = P.flatten(P.DEFAULTS), P.flatten(P.validate_params(raw))
    differ = {k: (want.get(k), have.get(k)) for k in set(want) | set(have) if want.get(k) != have.get(k)}
    assert not differ, f"params.py DEFAULTS vs params.yaml: {differ}"


def test_missing_key_error_suggests_the_shipped_value(raw):
    bad = copy.deepcopy(raw)
    del bad["midtrain"]["reading_frac"]
    with pytest.raises(P.ParamsError, match=r"midtrain\.reading_frac is missing; add it \(default: reading_frac: 0\.7\)"):
        P.validate_params(bad)


def test_unknown_key_is_refused_with_a_suggestion(raw):
    p = _with(raw, "pretrain.matrx_lr", 0.02)
    msg = _refused(p, "pretrain.matrx_lr", "unknown key", "did you mean `matrix_lr`")
    assert "params.yaml" in msg
    _refused(_with(raw, "kb.bm25.k11", 1.0), "kb.bm25.k11", "did you mean `k1`")
    p = copy.deepcopy(raw)
    p["pretrian"] = p.pop("pretrain")
    _refused(p, "pretrian", "did you mean `pretrain`")


def test_unknown_documents_key_uses_prepare_validation(raw):
    # The documents section is validated by nanochat_core.data.prepare; we add the suggestion.
    p = _with(raw, "documents.world.n_peple", 10)
    _refused(p, "documents.world.n_peple", "did you mean `n_people`")


def test_missing_key_is_refused(raw):
    _refused(_with(raw, "midtrain.grad_accum", _DELETE), "midtrain.grad_accum is missing", "grad_accum: 1")


@pytest.mark.parametrize("path,value,words", [
    ("pretrain.steps", "100", ["pretrain.steps", "an integer", "str"]),
    ("pretrain.steps", 100.0, ["pretrain.steps", "an integer"]),
    ("kb.chunking.enabled", 1, ["kb.chunking.enabled", "true or false"]),
    ("refrag_finetune.matrix_lr", "1e-4", ["refrag_finetune.matrix_lr", "1.0e-4"]),
    ("evaluate.modes", "rag", ["evaluate.modes", "a list"]),
    ("kb.bm25", 1.2, ["kb.bm25", "mapping"]),
    ("documents.world.n_people", "many", ["documents.world.n_people"]),
])
def test_wrong_type_names_the_key(raw, path, value, words):
    _refused(_with(raw, path, value), *words)


@pytest.mark.parametrize("path,value", [
    ("pretrain.steps", -1),
    ("midtrain.matrix_lr", 0.0),
    ("rag_finetune.embedding_lr", -0.1),
    ("refrag_finetune.max_len", 8),
    ("pretrain.warmdown_frac", 1.5),
    ("rag_finetune.abstain_frac", -0.1),
    ("midtrain.closed_book_frac", 2.0),
    ("evaluate.k", 0),
    ("rag_finetune.k", 0),
    ("midtrain.drill_docs", 0),
    ("rag_finetune.drill_people", 5),
    ("refrag_finetune.max_hops", 0),
    ("pretrain.batch_size", 0),
    ("pretrain.device", "tpu"),
    ("kb.bm25.b", 1.5),
    ("kb.bm25.method", "okapi"),
    ("evaluate.modes", ["rag", "rag"]),
    ("evaluate.checkpoints", []),
    ("rag_finetune.question_types", ["4hop"]),
    ("tokenizer.vocab_size", 100),
    ("documents.world.test_fraction", 1.5),
    ("refrag_finetune.rl_ema", 1.0),
    ("refrag_finetune.rl_rows_per_pass", 0),
])
def test_impossible_value_names_the_key(raw, path, value):
    _refused(_with(raw, path, value), path)


def test_rag_k_min_must_not_exceed_k(raw):
    _refused(_with(raw, "rag_finetune.k_min", 4), "rag_finetune.k_min must be <= rag_finetune.k")
    _refused(_with(raw, "rag_finetune.k_min", -1), "rag_finetune.k_min")


def test_fractions_that_must_add_up(raw):
    p = _with(_with(raw, "pretrain.warmup_frac", 0.6), "pretrain.warmdown_frac", 0.6)
    _refused(p, "pretrain.warmup_frac + pretrain.warmdown_frac")
    p = _with(_with(raw, "midtrain.closed_book_frac", 0.7), "midtrain.reading_frac", 0.7)
    _refused(p, "midtrain.closed_book_frac + midtrain.reading_frac")


def test_block_pattern_must_match_n_layer(raw):
    # Delegated to GPTConfig.validate(), which names both keys.
    _refused(_with(raw, "model.block_pattern", "TMT"), "model.block_pattern", "model.n_layer")
    _refused(_with(raw, "model.block_pattern", "TXTM"), "model.block_pattern", "'T'")
    _refused(_with(raw, "model.n_head", 3), "model.n_embd", "model.n_head")


def test_vocab_sizes_must_agree(raw):
    _refused(_with(raw, "model.vocab_size", 4096), "model.vocab_size", "tokenizer.vocab_size", "4096", "2048")


def test_retriever_names(raw):
    _refused(_with(raw, "kb.retrievers", ["bm25", "colbert"]), "kb.retrievers", "colbert")
    _refused(_with(raw, "evaluate.retriever", "splade"), "evaluate.retriever", "hybrid")
    # A retriever the KB is not built with is refused before any training starts.
    msg = _refused(_with(raw, "rag_finetune.retriever", "dense"), "rag_finetune.retriever", "kb.retrievers")
    assert "add dense" in msg
    _refused(_with(raw, "evaluate.retriever", "hybrid"), "evaluate.retriever is hybrid", "kb.retrievers")
    ok = _with(_with(raw, "kb.retrievers", ["bm25", "dense"]), "evaluate.retriever", "hybrid")
    assert P.validate_params(ok)["evaluate"]["retriever"] == "hybrid"


def test_load_params_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="repository root"):
        P.load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        P.load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("name", sorted(PR.list_presets()))
def test_every_preset_applies_and_validates(tmp_path, name):
    target = tmp_path / "params.yaml"
    target.write_text(PARAMS.read_text())
    params = PR.apply_preset(name, target)
    assert P.load_params(target) == params  # what was written is what was validated
    preset = PR.load_preset(name)
    for section, values in preset.items():
        for k, v in values.items():
            if isinstance(v, list) and all(isinstance(x, dict) for x in v):  # source specs get defaults filled
                got = params[section][k]
                assert len(got) == len(v) and all(g.items() >= w.items() for g, w in zip(got, v)), f"{name}: {section}.{k}"
            elif not isinstance(v, dict):
                assert params[section][k] == v, f"{name}: {section}.{k}"
    text = target.read_text()
    assert "# one char per layer: T attention, M Mamba" in text  # comments kept


def test_presets_cover_the_seed_configurations():
    names = set(PR.list_presets())
    assert {"transformer_d20", "mamba_d20", "hybrid_8T12M_d20", "hybrid_4T16M", "rtx3070_d16", "rag_hybrid_d20",
            "rag_mamba_d20", "refrag_hybrid_d20"} <= names
    base = yaml.safe_load(PARAMS.read_text())
    d20 = P.validate_params(PR.deep_merge(base, PR.load_preset("hybrid_8T12M_d20")))["model"]
    shape = (d20["n_layer"], d20["n_embd"], d20["n_head"], d20["sequence_len"], d20["vocab_size"])
    assert shape == (20, 1280, 10, 2048, 65536)
    assert d20["block_pattern"] == "T" * 8 + "M" * 12
    assert P.validate_params(PR.deep_merge(base, PR.load_preset("mamba_d20")))["model"]["block_pattern"] == "M" * 20
    assert P.validate_params(PR.deep_merge(base, PR.load_preset("rtx3070_d16")))["model"]["n_layer"] == 16


def test_invalid_preset_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "broken.yaml").write_text("# bad\nmodel: {n_layer: 6}\n")  # pattern still TMTM
    target = tmp_path / "params.yaml"
    target.write_text(PARAMS.read_text())
    before = target.read_text()
    with pytest.raises(ValueError, match="model.block_pattern"):
        PR.apply_preset("broken", target)
    assert target.read_text() == before
    with pytest.raises(ValueError, match="did you mean `broken`"):
        PR.apply_preset("brokn", target)


def test_preset_cli(tmp_path, capsys):
    from nanochat_core.cli import main
    assert main(["preset", "--list"]) == 0
    assert "hybrid_8T12M_d20" in capsys.readouterr().out
    target = tmp_path / "params.yaml"
    target.write_text(PARAMS.read_text())
    assert main(["preset", "mamba_d20", "--params", str(target), "--dry-run"]) == 0
    assert target.read_text() == PARAMS.read_text()
    assert main(["preset", "mamba_d20", "--params", str(target)]) == 0
    assert "model.block_pattern: 'TMTM' -> 'MMMMMMMMMMMMMMMMMMMM'" in capsys.readouterr().out
    assert P.load_params(target)["model"]["n_layer"] == 20
    assert main(["preset", "nope", "--params", str(target)]) == 2
    assert Path(target).read_text() != PARAMS.read_text()
