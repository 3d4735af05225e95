"""prepare_documents: the stage's files, their promises, and params validation."""
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nanochat_core.common import sha256_file
from nanochat_core.data.documents import load_documents
from nanochat_core.data.prepare import DEFAULTS, prepare_documents, validate_params
from nanochat_core.data.world import ABSTAIN, split_sentences

SMALL = {
    "seed": 11,
    "world": {"n_people": 80, "n_cities": 10, "n_countries": 3, "n_companies": 12, "n_universities": 4,
              "paraphrases_per_entity": 2},
    "questions": {"train": {"single": 150, "2hop": 100, "3hop": 80, "unanswerable": 40},
                  "eval": {"single": 40, "2hop": 40, "3hop": 30, "unanswerable": 20},
                  "counterfactual": 8, "known_single": 15, "val_fraction": 0.25},
    "real_text": {"python_docs": True, "max_chars": 20_000},
    "corpus": {"shard_chars": 20_000, "fresh_people": 150},
}


def with_seed(seed):
    p = copy.deepcopy(SMALL)
    p["seed"] = seed
    return p


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def prepare(params, d):
    """prepare_documents into one directory, laid out as dvc.yaml lays out data/."""
    d = Path(d)
    return prepare_documents(params, d / "documents.jsonl", d / "corpus", d / "qa")


def states(text, *parts):
    return any(all(p in s for p in parts) for s in split_sentences(text))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep")
    summary = prepare(SMALL, d)
    docs = {x["id"]: x for x in load_documents(d / "documents.jsonl")}
    shards = sorted((d / "corpus").glob("shard_*.jsonl"))
    corpus = [r for s in shards for r in read_jsonl(s)]
    qa = {n: read_jsonl(d / "qa" / f"{n}.jsonl") for n in ("train", "val", "test")}
    return d, summary, docs, corpus, qa


def output_files(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


def test_same_seed_same_bytes_other_seed_differs(out, tmp_path):
    d, summary, *_ = out
    again = prepare(SMALL, tmp_path / "a")
    assert output_files(tmp_path / "a") == output_files(d)
    for f in output_files(d):
        assert (tmp_path / "a" / f).read_bytes() == (d / f).read_bytes(), f
    assert again == summary
    other = prepare(with_seed(12), tmp_path / "b")
    for f in ("documents.jsonl", "qa/train.jsonl", "qa/test.jsonl"):
        assert other["sha256"][f] != summary["sha256"][f]


def test_outputs_and_summary(out):
    d, summary, docs, corpus, qa = out
    assert output_files(d) == sorted(["documents.jsonl", "qa/train.jsonl", "qa/val.jsonl", "qa/test.jsonl",
                                      "qa/rl.jsonl"]
                                     + [f"corpus/shard_{i:05d}.jsonl" for i in range(summary["corpus"]["shards"])])
    assert (d / "qa" / "rl.jsonl").read_text() == "" and summary["world"]["rl_people"] == 0  # no RL people by default
    assert summary["corpus"]["shards"] >= 2  # 20k chars per shard
    for name, digest in summary["sha256"].items():
        assert sha256_file(d / name) == digest
    assert summary["documents"]["count"] == len(docs) == 80 + 10 + 3 + 12 + 4
    assert all(x["source"] == "world" for x in docs.values())  # real text stays out of the KB by default
    assert summary["corpus"]["records"] == len(corpus)
    assert {r["source"] for r in corpus} == {"world", "python_docs", "fresh_people"}
    assert summary["corpus"]["by_source"]["fresh_people"] == summary["corpus"]["fresh_people_records"] > 120
    assert all(set(r) == ({"text", "source", "people"} if r["source"] in ("world", "fresh_people") else {"text", "source"})
               for r in corpus)
    for name, recs in qa.items():
        assert summary["qa"][name]["count"] == len(recs)
        types = {}
        for r in recs:
            types[r["type"]] = types.get(r["type"], 0) + 1
        assert summary["qa"][name]["by_type"] == dict(sorted(types.items()))
    assert summary["skipped"]["python_docs"]["over_max_chars"] > 0
    assert summary["questions"]["counterfactual"] == {"requested": 8, "produced": 8}


def test_fresh_people_are_named_once_and_only_in_their_own_document(out):
    """Each fresh person's name is in exactly one corpus record, in every sentence of it (so
    its later mentions can only be predicted by copying), nests no real name and is nested by
    none (so it cannot be recalled), and the tokenizer trainer never sees it."""
    _, _, docs, corpus, _ = out
    fresh = [r for r in corpus if r["source"] == "fresh_people"]
    real = {x["title"] for x in docs.values()}
    real_places = {x["title"] for x in docs.values() if x["metadata"]["entity_type"] != "person"}
    names = [r["people"][0] for r in fresh]
    assert all(len(r["people"]) == 1 for r in fresh) and len(set(names)) == len(names) > 120  # <= 150: 2+ facts only
    everything = "\n".join(r["text"] for r in corpus)
    for r, name in zip(fresh, names):
        assert everything.count(name) == r["text"].count(name) == len(split_sentences(r["text"])) >= 2
        assert not re.search(r"\b1[89]\d\d\b|\b20\d\d\b", r["text"])  # no birth years
        assert not any(name in n or n in name for n in real)
        rest = r["text"].replace(name, "")
        assert any(n in rest for n in real_places)  # facts about real places, companies, universities
        assert "found" not in r["text"]  # "X founded C" would contradict C's real founder
    from nanochat_core.stages import tokenizer_texts
    assert not any(name in t for t in tokenizer_texts(corpus, 10**9) for name in names)


def test_fresh_people_zero_adds_none_and_the_rest_is_unchanged(tmp_path, out):
    _, summary, _, corpus, _ = out
    p = copy.deepcopy(SMALL)
    p["corpus"]["fresh_people"] = 0
    s0 = prepare(p, tmp_path)
    corpus0 = [r for f in sorted((tmp_path / "corpus").glob("shard_*.jsonl")) for r in read_jsonl(f)]
    assert s0["corpus"]["fresh_people_records"] == 0 and "fresh_people" not in s0["corpus"]["by_source"]
    key = lambda r: r["text"]
    assert sorted(corpus0, key=key) == sorted((r for r in corpus if r["source"] != "fresh_people"), key=key)
    assert s0["sha256"]["documents.jsonl"] == summary["sha256"]["documents.jsonl"]
    for name in ("train", "val", "test"):
        assert s0["sha256"][f"qa/{name}.jsonl"] == summary["sha256"][f"qa/{name}.jsonl"]


def test_test_people_are_in_the_kb_only(out):
    _, _, docs, corpus, qa = out
    test_people = [x["title"] for x in docs.values()
                   if x["metadata"]["entity_type"] == "person" and x["metadata"]["entity_split"] == "test"]
    assert len(test_people) == 16
    corpus_text = "\n".join(r["text"] for r in corpus)
    kb_text = "\n".join(x["text"] for x in docs.values())
    for name in test_people:
        assert name not in corpus_text
        assert kb_text.count(name) >= 2  # their own document and at least one other (e.g. a city's)
    assert not any(n in json.dumps(qa["train"]) for n in test_people)
    # The train entities are all in the corpus, with paraphrases.
    train_titles = [x["title"] for x in docs.values() if x["metadata"]["entity_split"] == "train"]
    assert all(t in corpus_text for t in train_titles)


def test_rl_people_write_rl_questions_and_stay_out_of_the_corpus(tmp_path, out):
    """world.rl_fraction > 0: qa/rl.jsonl holds the RL people's questions; those people are
    named in the KB and in no corpus line or train question (a val/test chain may pass through
    one, as through a train person); test people stay the same."""
    _, summary, docs, *_ = out
    p = copy.deepcopy(SMALL)
    p["world"]["rl_fraction"] = 0.1
    s = prepare(p, tmp_path)
    d = {x["id"]: x for x in load_documents(tmp_path / "documents.jsonl")}
    rl_people = [x["title"] for x in d.values() if x["metadata"]["entity_split"] == "rl"]
    assert s["world"]["rl_people"] == len(rl_people) == round(0.1 * SMALL["world"]["n_people"]) > 0
    assert s["world"]["test_people"] == summary["world"]["test_people"]
    assert {x["title"] for x in d.values() if x["metadata"]["entity_split"] == "test"} == \
        {x["title"] for x in docs.values() if x["metadata"]["entity_split"] == "test"}
    rl = read_jsonl(tmp_path / "qa" / "rl.jsonl")
    assert rl and s["qa"]["rl"]["count"] == len(rl) and all(r["entity_split"] == "rl" for r in rl)
    corpus = "\n".join(r["text"] for f in sorted((tmp_path / "corpus").glob("shard_*.jsonl")) for r in read_jsonl(f))
    train = (tmp_path / "qa" / "train.jsonl").read_text()
    for name in rl_people:
        assert name not in corpus and name not in train and name in d[next(i for i in d if d[i]["title"] == name)]["text"]


def test_question_files(out):
    _, _, docs, _, qa = out
    assert {r["type"] for r in qa["train"]} == {"single", "2hop", "3hop", "unanswerable"}
    assert {r["type"] for r in qa["val"]} == {"single", "2hop", "3hop", "unanswerable"}
    assert {r["type"] for r in qa["test"]} == {"single", "2hop", "3hop", "unanswerable", "counterfactual"}
    assert all(r["entity_split"] == "train" for r in qa["train"])
    assert all(r["entity_split"] == "test" for r in qa["val"])
    known = [r for r in qa["test"] if r["entity_split"] == "train" and r["type"] == "single"]
    assert len(known) == 15
    for recs in qa.values():
        for r in recs:
            assert set(r) >= {"id", "type", "question", "answers", "gold_doc_ids", "hops", "entity_split", "relation"}
            assert all(i in docs for hop in r["gold_doc_ids"] for i in hop)
            if r["type"] == "unanswerable":
                assert r["answers"] == [ABSTAIN]
                continue
            final = docs[r["gold_doc_ids"][-1][0]]
            assert r["answers"][0] in final["text"]
            for h in r["hops"]:
                assert states(docs[h["doc_id"]]["text"], h["query"], h["answer"])


def test_counterfactual_follows_kb_not_corpus(out):
    _, _, docs, corpus, qa = out
    cf = [r for r in qa["test"] if r["type"] == "counterfactual"]
    assert len(cf) == 8
    for r in cf:
        new, old, subj = r["answers"][0], r["original_answer"], r["subject"]
        assert states(docs[r["subject_id"]]["text"], subj, new)
        assert not any(states(x["text"], subj, old) for x in docs.values())
        assert any(states(c["text"], subj, old) for c in corpus)
        assert not any(states(c["text"], subj, new) for c in corpus)


def test_real_text_in_kb_on_request_and_stale_shards_removed(tmp_path):
    src = tmp_path / "mine.jsonl"
    src.write_text(json.dumps({"text": "Lorem ipsum quux."}) + "\n\n", encoding="utf-8")
    p = copy.deepcopy(SMALL)
    p.update(sources=[{"type": "jsonl", "path": str(src)}], kb_include_real_text=True)
    p["corpus"]["shard_chars"] = 5_000
    s1 = prepare(p, tmp_path / "o")
    docs = load_documents(tmp_path / "o" / "documents.jsonl")
    mine = [x for x in docs if x["source"] == str(src)]
    assert [x["text"] for x in mine] == ["Lorem ipsum quux."] and mine[0]["id"] == "mine:mine.jsonl:1"
    assert any(x["source"] == "python_docs" for x in docs)
    assert s1["skipped"][str(src)] == {"blank_line": 1}
    corpus = [json.loads(line) for f in (tmp_path / "o" / "corpus").glob("*.jsonl")
              for line in f.read_text().splitlines()]
    assert {"text": "Lorem ipsum quux.", "source": str(src)} in corpus
    p["corpus"]["shard_chars"] = 10_000_000
    s2 = prepare(p, tmp_path / "o")
    assert s1["corpus"]["shards"] > 1 and s2["corpus"]["shards"] == 1
    assert [f.name for f in (tmp_path / "o" / "corpus").iterdir()] == ["shard_00000.jsonl"]


def test_bad_source_fails_naming_the_file(tmp_path):
    p = copy.deepcopy(SMALL)
    p["sources"] = [{"type": "text", "path": str(tmp_path / "gone.txt")}]
    with pytest.raises(ValueError, match="gone.txt does not exist"):
        prepare(p, tmp_path / "o")
    assert not (tmp_path / "o" / "documents.jsonl").exists()


def test_validate_params_fills_defaults():
    p = validate_params({"world": {"n_people": 50}})
    assert p["world"]["n_people"] == 50 and p["world"]["n_cities"] == DEFAULTS["world"]["n_cities"]
    assert p["questions"]["train"] == DEFAULTS["questions"]["train"]
    assert validate_params(None) == validate_params({})
    rate = validate_params({"world": {"missing_fact_rate": 0}})["world"]["missing_fact_rate"]
    assert rate == 0.0 and isinstance(rate, float)  # an int is fine where a float is expected


@pytest.mark.parametrize("params, message", [
    ({"world": {"n_peple": 5}}, "documents.world.n_peple: unknown key; valid keys are n_people, n_cities"),
    ({"wrld": {}}, "documents.wrld: unknown key; valid keys are seed, world"),
    ({"questions": {"train": {"4hop": 3}}}, "documents.questions.train.4hop: unknown key"),
    ({"world": {"n_people": "400"}}, "documents.world.n_people: expected int, got str"),
    ({"world": {"n_people": True}}, "documents.world.n_people: expected int, got bool"),
    ({"world": {"n_people": 4.0}}, "documents.world.n_people: expected int, got float"),
    ({"world": 3}, "documents.world: expected a mapping, got int"),
    ({"real_text": {"python_docs": "yes"}}, "documents.real_text.python_docs: expected bool, got str"),
    ({"sources": {"type": "jsonl"}}, "documents.sources: expected list, got dict"),
    ({"world": {"test_fraction": 1.5}}, "documents.world.test_fraction: must be strictly between 0 and 1, got 1.5"),
    ({"world": {"test_fraction": 0}}, "documents.world.test_fraction: must be strictly between 0 and 1"),
    ({"world": {"rl_fraction": -0.1}}, "documents.world.rl_fraction: must be in [0, 1)"),
    ({"world": {"test_fraction": 0.5, "rl_fraction": 0.5}},
     "documents.world.rl_fraction: test_fraction + rl_fraction must be < 1"),
    ({"world": {"n_people": 1}}, "documents.world.n_people: must be between 2 and"),
    ({"questions": {"eval": {"2hop": -1}}}, "documents.questions.eval.2hop: must be >= 0, got -1"),
    ({"questions": {"counterfactual": -3}}, "documents.questions.counterfactual: must be >= 0, got -3"),
    ({"questions": {"val_fraction": 2}}, "documents.questions.val_fraction: must be in [0, 1], got 2"),
    ({"world": {"n_countries": 50, "n_cities": 10}}, "documents.world.n_countries: must be <= world.n_cities"),
    ({"sources": [{"type": "jsnl", "path": "x"}]}, "documents.sources[0].type: unknown source type 'jsnl'"),
])
def test_validate_params_refuses(params, message):
    with pytest.raises(ValueError) as e:
        validate_params(params)
    assert message in str(e.value)


def test_deterministic_across_processes(out, tmp_path):
    # String-seeded RNGs and no set-order dependence: another interpreter with another hash
    # seed writes the same bytes.
    summary = out[1]
    code = ("import json, sys; from nanochat_core.data.prepare import prepare_documents; "
            "from pathlib import Path; d = Path(sys.argv[2]); "
            "print(json.dumps(prepare_documents(json.loads(sys.argv[1]), d / 'documents.jsonl', d / 'corpus', "
            "d / 'qa')['sha256']))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    res = subprocess.run([sys.executable, "-c", code, json.dumps(SMALL), str(tmp_path / "p")], env=env,
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    assert json.loads(res.stdout) == summary["sha256"]


def test_duplicate_ids_across_sources_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for x in (a, b):
        x.mkdir()
        (x / "notes.txt").write_text("Same relative path.", encoding="utf-8")
    p = copy.deepcopy(SMALL)
    p["sources"] = [{"type": "dir", "path": str(a), "name": "n"}, {"type": "dir", "path": str(b), "name": "n"}]
    with pytest.raises(ValueError, match="document id 'n:notes.txt' comes from both .*give one of the sources a different `name`"):
        prepare(p, tmp_path / "o")
    p["sources"][1]["name"] = "m"
    assert prepare(p, tmp_path / "o")["corpus"]["by_source"]["real_text"] > 2


def test_world_corpus_lines_list_exactly_the_people_they_name(out):
    # the tokenizer trainer cuts these names out (stages.tokenizer_texts), so the list must be complete
    d, summary, docs, corpus, qa = out
    people = {x["title"] for x in docs.values() if x["metadata"]["entity_type"] == "person"}
    test_people = {x["title"] for x in docs.values() if x["metadata"]["entity_split"] == "test"}
    world = [r for r in corpus if r["source"] == "world"]
    for r in world:
        named = {n for n in people if n in r["text"]}
        # a listed name may hide inside a longer one only if that one is listed too
        assert set(r["people"]) >= {n for n in named if not any(n != m and n in m for m in named)}, r
        assert set(r["people"]) <= named and not set(r["people"]) & test_people
    assert sum(len(r["people"]) for r in world) > len(world)  # documents mention other people too


def test_tokenizer_text_cuts_people_so_held_out_names_split_like_train_names(out):
    # Train people's names are in the corpus, test people's are not; BPE trained on them would
    # give train names short merges and test names long spellings. Shared entities (cities,
    # companies, universities) and relation words should still get merges.
    from nanochat_core.stages import tokenizer_texts
    from nanochat_core.tokenizer import Tokenizer
    d, summary, docs, corpus, qa = out
    texts = tokenizer_texts(corpus, 10**9)
    joined = "\n".join(texts)
    by = lambda **kv: [x["title"] for x in docs.values() if all(x["metadata"][k] == v for k, v in kv.items())]
    assert not [n for n in by(entity_type="person") if n in joined]
    assert len(texts) == len(corpus) and sum(map(len, texts)) < sum(len(r["text"]) for r in corpus)
    tok = Tokenizer.train(texts, 1024)
    mean = lambda names: sum(len(tok.encode(" " + n)) for n in names) / len(names)
    train, test = mean(by(entity_type="person", entity_split="train")), mean(by(entity_type="person", entity_split="test"))
    assert abs(train - test) / train < 0.1, (train, test)
    assert mean(by(entity_type="city")) <= 2 < train
    assert tokenizer_texts(corpus, 5000) and sum(map(len, tokenizer_texts(corpus, 5000))) == 5000
