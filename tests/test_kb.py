"""The on-disk knowledge base: round trip, incremental add/remove, and every refusal."""
import json
import random
import shutil

import numpy as np
import pytest

from nanochat_core.retrieval import KBError, KnowledgeBase
from nanochat_core.retrieval import dense as dense_mod

FIRST = ["Ada", "Bruno", "Chiara", "Dmitri", "Elif", "Farah", "Goran", "Hana", "Ivo", "Jun"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Silva", "Novak", "Haddad", "Kowalski", "Reyes", "Byrne"]
CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Hobart", "Tunis", "Oslo", "Lima", "Hanoi"]
JOBS = ["glassblower", "astronomer", "beekeeper", "cartographer", "violin maker", "geologist", "baker", "pilot"]
HOBBIES = ["chess", "sailing", "birdwatching", "pottery", "rock climbing", "origami", "fencing", "gardening"]


def people(n, start=0, seed=0):
    rng = random.Random(seed)
    docs = []
    for i in range(start, start + n):
        name = f"{FIRST[i % 10]} {LAST[(i // 10) % 10]}"
        text = (f"{name} was born in {rng.choice(CITIES)} in {1900 + rng.randrange(120)}. "
                f"{name.split()[0]} works as a {rng.choice(JOBS)} and spends weekends on {rng.choice(HOBBIES)}.")
        docs.append({"id": f"p{i:03d}", "title": name, "text": text, "source": "synthetic", "metadata": {"i": i}})
    return docs


QUERIES = ["astronomer born in Osaka", "who enjoys pottery", "Chiara Moreau", "a baker from Lima",
           "someone who makes violins and sails"]
RETRIEVERS = ["bm25", "dense", "tfidf", "hybrid"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 100-document KB with every retriever, built once; tests that change it copy it first."""
    d = tmp_path_factory.mktemp("kb") / "kb"
    KnowledgeBase.build(people(100), d, retrievers="all")
    return d


@pytest.fixture
def kb_copy(built, tmp_path):
    dst = tmp_path / "kb"
    shutil.copytree(built, dst)
    return dst


@pytest.fixture
def count_encoded(monkeypatch):
    """Wraps the shared encoder's encode() and records every text it is asked to embed."""
    model = dense_mod.load_encoder(dense_mod.DEFAULT_MODEL)
    seen, orig = [], model.encode

    def encode(texts, *a, **kw):
        seen.extend(texts)
        return orig(texts, *a, **kw)
    monkeypatch.setattr(model, "encode", encode)
    return seen


def search_all(kb, k=10):
    return {r: kb.search(QUERIES, k=k, retriever=r) for r in RETRIEVERS}


def test_round_trip_returns_identical_hits(built):
    kb = KnowledgeBase.load(built)
    assert len(kb) == 100 and kb.get("p007")["title"] == "Hana Okafor"
    again = KnowledgeBase.load(built)
    first = search_all(kb)
    assert first == search_all(again)
    assert all(len(hits) == 10 for r in ("dense", "hybrid") for hits in first[r])
    # the names themselves are found by the lexical retrievers
    assert kb.search(["Chiara Moreau"], k=1, retriever="bm25")[0][0].doc_id == "p022"


def test_manifest_records_hashes_model_and_config(built):
    m = json.loads((built / "manifest.json").read_text())
    assert m["format"] == "nanochat-kb" and m["format_version"] == 1 and m["num_documents"] == 100
    assert set(m["retrievers"]) == {"tfidf", "bm25", "dense"}
    model = m["retrievers"]["dense"]["embedding_model"]
    assert model["name"] == "all-MiniLM-L6-v2" and model["dim"] == 384 and len(model["sha256"]) == 64
    assert m["retrievers"]["bm25"]["config"]["k1"] == 1.2
    assert m["documents_sha256"] == m["files"]["documents.jsonl"]
    info = KnowledgeBase.load(built).info()
    assert info["num_documents"] == 100 and info["embedding_model"]["name"] == "all-MiniLM-L6-v2"


def test_files_are_open_formats_never_pickle(built):
    allowed = {".json", ".jsonl", ".npy", ".npz", ".faiss"}
    files = [p for p in built.rglob("*") if p.is_file()]
    assert files and {p.suffix for p in files} <= allowed
    for p in files:
        if p.suffix == ".npy":
            assert np.load(p, allow_pickle=False).dtype != object
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                assert all(z[k].dtype != object for k in z.files)
        elif p.suffix in (".json", ".jsonl"):
            for line in p.read_text().splitlines() if p.suffix == ".jsonl" else [p.read_text()]:
                json.loads(line)
    assert not list(built.parent.glob(".kb.*"))  # the atomic swap left nothing behind


def test_add_one_percent_encodes_only_new_docs_and_equals_rebuild(kb_copy, tmp_path, count_encoded):
    kb = KnowledgeBase.load(kb_copy)
    new = people(1, start=100, seed=1)
    kb.add(new)
    assert count_encoded == [f"{new[0]['title']} {new[0]['text']}"]  # 1 of 101 docs encoded
    reloaded = KnowledgeBase.load(kb_copy)
    assert len(reloaded) == 101 and reloaded.get("p100") == new[0]

    count_encoded.clear()
    full = KnowledgeBase.build(people(100) + new, tmp_path / "full", retrievers="all")
    assert len(count_encoded) == 101  # the hook sees a full build encode everything
    got, want = search_all(reloaded), search_all(full)
    for r in RETRIEVERS:
        for g, w in zip(got[r], want[r]):
            assert [h.doc_id for h in g] == [h.doc_id for h in w], r
            # dense vectors of a doc encoded alone vs. in a batch differ in the last float bits
            assert [h.score for h in g] == pytest.approx([h.score for h in w], rel=1e-5, abs=1e-6), r


def test_remove_makes_ids_unreachable(kb_copy, count_encoded):
    kb = KnowledgeBase.load(kb_copy)
    gone = ["p022", "p007", "p050"]
    kb.remove(gone)
    assert count_encoded == []  # removing never encodes
    for k in (kb, KnowledgeBase.load(kb_copy)):
        assert len(k) == 97
        with pytest.raises(KeyError):
            k.get("p022")
        for r in RETRIEVERS:
            for hits in k.search(QUERIES + ["Chiara Moreau", "Hana Okafor"], k=200, retriever=r):
                assert not set(gone) & {h.doc_id for h in hits}, r


def test_add_existing_id_and_remove_unknown_id_change_nothing(kb_copy):
    kb = KnowledgeBase.load(kb_copy)
    with pytest.raises(ValueError, match="already in KB.*'p001'.*Nothing was added"):
        kb.add(people(1, start=1))
    with pytest.raises(ValueError, match="not in KB.*'nope'.*nothing was removed"):
        kb.remove(["p001", "nope"])
    assert len(KnowledgeBase.load(kb_copy)) == 100


def test_bm25_only_kb_never_loads_the_embedding_model(tmp_path, monkeypatch):
    def no_model(name):
        raise AssertionError("the embedding model was loaded")
    monkeypatch.setattr(dense_mod, "load_encoder", no_model)
    kb = KnowledgeBase.build(people(20), tmp_path / "kb", retrievers=("bm25",))
    kb = KnowledgeBase.load(tmp_path / "kb")
    kb.add(people(2, start=20))
    kb.remove(["p000"])
    assert kb.search(["Chiara Lindqvist"], k=1)[0][0].doc_id == "p012"  # hybrid over bm25 alone
    with pytest.raises(ValueError, match="has no 'dense' index.*--retrievers bm25,dense"):
        kb.search(["x"], retriever="dense")


def test_loaded_kb_answers_bm25_without_the_model(built, monkeypatch):
    monkeypatch.setattr(dense_mod, "load_encoder", lambda name: (_ for _ in ()).throw(AssertionError("loaded")))
    kb = KnowledgeBase.load(built)
    assert kb.search(["Chiara Moreau"], k=1, retriever="bm25")[0][0].doc_id == "p022"


# ---------------------------------------------------------------------------------- refusals

def edit_manifest(d, fn):
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


def test_refuses_kb_built_with_another_model(kb_copy):
    edit_manifest(kb_copy, lambda m: m["retrievers"]["dense"]["embedding_model"].update(name="e5-small-v2"))
    with pytest.raises(ValueError, match=r"KB at .*kb was built with embedding model 'e5-small-v2'; this query "
                                         r"uses 'all-MiniLM-L6-v2'.*rebuild it with `nanochat kb build"):
        KnowledgeBase.load(kb_copy, embedding_model="all-MiniLM-L6-v2")
    with pytest.raises(ValueError, match="built with embedding model 'e5-small-v2', which is not available here"):
        KnowledgeBase.load(kb_copy)


def test_refuses_query_model_other_than_the_kbs(built, tmp_path):
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"not the same weights")
    with pytest.raises(ValueError, match=f"built with embedding model 'all-MiniLM-L6-v2'; this query uses '{other}'"):
        KnowledgeBase.load(built, embedding_model=str(other))


def test_refuses_when_installed_weights_differ(kb_copy):
    edit_manifest(kb_copy, lambda m: m["retrievers"]["dense"]["embedding_model"].update(sha256="0" * 64))
    with pytest.raises(ValueError, match="whose weights had sha256 000000000000; the installed weights have"):
        KnowledgeBase.load(kb_copy)


def test_refuses_missing_file(kb_copy):
    (kb_copy / "dense" / "index.faiss").unlink()
    with pytest.raises(KBError, match=r"is missing 1 file\(s\) \(dense/index.faiss\); rebuild it with"):
        KnowledgeBase.load(kb_copy)


@pytest.mark.parametrize("name", ["bm25/data.csc.index.npy", "documents.jsonl", "tfidf/vocab.json"])
def test_refuses_corrupted_file(kb_copy, name):
    p = kb_copy / name
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(KBError, match=f"corrupted file\\(s\\) {name} .*rebuild it with"):
        KnowledgeBase.load(kb_copy)


def test_refuses_bad_manifest_and_non_kb_dirs(kb_copy, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KBError, match="is not a KB \\(no manifest.json\\)"):
        KnowledgeBase.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no KB at .*nowhere; build one with `nanochat kb build"):
        KnowledgeBase.load(tmp_path / "nowhere")
    edit_manifest(kb_copy, lambda m: m.update(format_version=99))
    with pytest.raises(KBError, match="format version 99, this code reads version 1"):
        KnowledgeBase.load(kb_copy)
    (kb_copy / "manifest.json").write_text('{"format": "nanochat-kb", ')
    with pytest.raises(KBError, match="manifest .* is corrupted"):
        KnowledgeBase.load(kb_copy)
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists, is not empty and is not a KB"):
        KnowledgeBase.build(people(3), tmp_path / "stuff", retrievers=("bm25",))
