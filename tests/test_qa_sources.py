"""SQuAD and HotpotQA sources on small hand-made files: paragraphs become documents,
questions keep their answers and gold documents, the split never puts one paragraph in two
splits, and every malformed row is either an error naming the file and row or (on_error:
skip) left out and counted."""
import copy
import json

import pytest

from nanochat_core.data.prepare import DEFAULTS, prepare_documents
from nanochat_core.data.qa_sources import load_qa_source
from nanochat_core.data.sources import SourceError, validate_source_spec
from nanochat_core.data.world import ABSTAIN

SQUAD = {"version": "v2.0", "data": [
    {"title": "Glass_Making", "paragraphs": [
        {"context": "Glass is made from sand heated to 1700 degrees in a furnace.", "qas": [
            {"id": "q1", "question": "What is glass made from?", "is_impossible": False,
             "answers": [{"text": "sand", "answer_start": 17}, {"text": "sand", "answer_start": 17},
                         {"text": "sand heated", "answer_start": 17}]},
            {"id": "q2", "question": "Who invented glass?", "is_impossible": True, "answers": []}]},
        {"context": "Venice became a glass centre in the 13th century.", "qas": [
            {"id": "q3", "question": "When did Venice become a glass centre?",
             "answers": [{"text": "the 13th century", "answer_start": 32}]}]}]},
    {"title": "Clocks", "paragraphs": [
        {"context": "The first pendulum clock was built by Christiaan Huygens in 1656.", "qas": [
            {"id": "q4", "question": "Who built the first pendulum clock?",
             "answers": [{"text": "Christiaan Huygens", "answer_start": 38}]}]}]}]}


def _hotpot_row(i, n_sup=2):
    return {"question_id": f"h{i}", "question_text": f"Where was the founder of Firm{i} born?",
            "answers_objects": [{"number": "", "spans": [f"Town{i}"]}],
            "contexts": [{"id": "0", "title": f"Firm{i}", "paragraph_text": f"Firm{i} was founded by Ann{i}.",
                          "is_supporting": True},
                         {"id": "1", "title": "Noise", "paragraph_text": "Noise is shared by every question.",
                          "is_supporting": False},
                         {"id": "2", "title": f"Ann{i}", "paragraph_text": f"Ann{i} was born in Town{i}.",
                          "is_supporting": n_sup >= 2}]}


def _spec(t, path, **kw):
    return validate_source_spec({"type": t, "path": str(path), **kw})


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_squad_paragraphs_become_documents_and_questions_keep_answers(tmp_path):
    path = _write(tmp_path / "dev.json", SQUAD)
    docs, files, stats = load_qa_source(_spec("squad", path, val_fraction=0.0, test_fraction=0.0), seed=1)
    assert [d["title"] for d in docs] == ["Glass Making", "Glass Making", "Clocks"]
    assert docs[0]["text"] == SQUAD["data"][0]["paragraphs"][0]["context"]
    qs = {q["id"]: q for q in files["train"]}
    assert set(qs) == {"squad-q1", "squad-q2", "squad-q3", "squad-q4"} and not files["val"] and not files["test"]
    q1, q2 = qs["squad-q1"], qs["squad-q2"]
    assert q1["type"] == "single" and q1["answers"] == ["sand", "sand heated"]  # duplicates merged, order kept
    assert q1["gold_doc_ids"] == [[docs[0]["id"]]] and q1["hops"][0]["doc_id"] == docs[0]["id"]
    assert q2["type"] == "unanswerable" and q2["answers"] == [ABSTAIN] and q2["gold_doc_ids"] == [[docs[0]["id"]]]
    assert all(q["dataset"] == "squad" and q["entity_split"] == "train" for q in qs.values())
    assert stats["documents"] == 3 and stats["skipped"] == {}


def test_the_split_is_by_paragraph_and_set_by_the_seed(tmp_path):
    big = copy.deepcopy(SQUAD)
    big["data"][0]["paragraphs"] = [{"context": f"Paragraph {i} says glass {i}.", "qas": [
        {"id": f"p{i}q{j}", "question": f"What does paragraph {i} say {j}?", "answers": [{"text": f"glass {i}"}]}
        for j in range(3)]} for i in range(40)]
    path = _write(tmp_path / "dev.json", big)
    spec = _spec("squad", path, val_fraction=0.25, test_fraction=0.25)
    _, files, _ = load_qa_source(spec, seed=7)
    by_split = {name: {q["gold_doc_ids"][0][0] for q in qs} for name, qs in files.items()}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
    assert sum(len(qs) for qs in files.values()) == 40 * 3 + 1  # every question, in exactly one split
    assert {len(by_split["test"]), len(by_split["val"])} == {10}
    assert all(q["entity_split"] == "test" for q in files["test"] + files["val"])
    assert load_qa_source(spec, seed=7)[1] == files and load_qa_source(spec, seed=8)[1] != files
    _, capped, stats = load_qa_source(_spec("squad", path, max_questions=30), seed=7)
    assert sum(len(qs) for qs in capped.values()) == 30 and stats["skipped"]["over_max_questions"] == 40 * 3 + 1 - 30


@pytest.mark.parametrize("breakage,where,reason", [
    (lambda d: d["data"][0]["paragraphs"][1]["qas"][0].pop("question"), r"data\[0\]\.paragraphs\[1\]\.qas\[0\]: question",
     "missing_field"),
    (lambda d: d["data"][1]["paragraphs"][0]["qas"][0].update(answers=[]), r"data\[1\]\.paragraphs\[0\]\.qas\[0\]: an answerable",
     "missing_field"),
    (lambda d: d["data"][0]["paragraphs"][0].pop("context"), r"data\[0\]\.paragraphs\[0\]: context", "missing_field"),
    (lambda d: d["data"].insert(1, "not an article"), r"data\[1\]: needs 'title'", "malformed_row"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(is_impossible="no"),
     r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: is_impossible must be", "malformed_row"),
])
def test_a_bad_squad_row_is_named_or_skipped_and_counted(tmp_path, breakage, where, reason):
    bad = copy.deepcopy(SQUAD)
    breakage(bad)
    path = _write(tmp_path / "dev.json", bad)
    with pytest.raises(SourceError, match=rf"{tmp_path}/dev.json: {where}.*on_error: skip"):
        load_qa_source(_spec("squad", path), seed=1)
    _, files, stats = load_qa_source(_spec("squad", path, on_error="skip"), seed=1)
    assert sum(stats["skipped"].values()) == 1 and reason in stats["skipped"]
    assert sum(len(q) for q in files.values()) >= 1


def test_squad_ids_must_exist_and_be_unique(tmp_path):
    bad = copy.deepcopy(SQUAD)
    bad["data"][0]["paragraphs"][0]["qas"][0]["id"] = None
    with pytest.raises(SourceError, match=r"qas\[0\]: id must be a non-empty string or number, got None"):
        load_qa_source(_spec("squad", _write(tmp_path / "a.json", bad)), seed=1)
    bad = copy.deepcopy(SQUAD)
    bad["data"][1]["paragraphs"][0]["qas"][0]["id"] = "q1"
    with pytest.raises(SourceError, match=r"data\[1\]\.paragraphs\[0\]\.qas\[0\]: duplicate question id 'squad-q1' "
                                          r"\(first at .*data\[0\]\.paragraphs\[0\]\.qas\[0\]\)"):
        load_qa_source(_spec("squad", _write(tmp_path / "b.json", bad)), seed=1)
    _, files, stats = load_qa_source(_spec("squad", tmp_path / "b.json", on_error="skip"), seed=1)
    assert stats["skipped"] == {"duplicate_id": 1} and sum(map(len, files.values())) == 3


def test_squad_files_that_are_not_squad(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        load_qa_source(_spec("squad", tmp_path / "missing.json"), seed=1)
    with pytest.raises(SourceError, match="not SQuAD JSON"):
        load_qa_source(_spec("squad", _write(tmp_path / "list.json", [1, 2])), seed=1)
    (tmp_path / "trunc.json").write_text(json.dumps(SQUAD)[:-20])
    with pytest.raises(SourceError, match=r"trunc.json: malformed JSON .*line 1"):
        load_qa_source(_spec("squad", tmp_path / "trunc.json"), seed=1)
    (tmp_path / "latin.json").write_bytes(json.dumps(SQUAD).replace("Clocks", "Horloges \u00e9").encode("latin-1"))
    with pytest.raises(SourceError, match=r"latin.json: invalid UTF-8"):
        load_qa_source(_spec("squad", tmp_path / "latin.json"), seed=1)
    with pytest.raises(ValueError, match=r"on_error: must be raise or skip"):
        _spec("squad", tmp_path / "x.json", on_error="ignore")
    with pytest.raises(ValueError, match=r"sum to less than 1"):
        _spec("squad", tmp_path / "x.json", val_fraction=0.5, test_fraction=0.5)


def test_hotpotqa_jsonl_two_supporting_paragraphs_are_the_hops(tmp_path):
    path = tmp_path / "hotpot.jsonl"
    path.write_text("".join(json.dumps(_hotpot_row(i)) + "\n" for i in range(3)) + "\n")
    docs, files, stats = load_qa_source(_spec("hotpotqa", path, val_fraction=0.0, test_fraction=0.0), seed=1)
    assert len(docs) == 3 * 2 + 1  # the shared "Noise" paragraph is one document
    q = next(q for q in files["train"] if q["id"] == "hotpotqa-h1")
    firm, ann = (next(d["id"] for d in docs if d["title"] == t) for t in ("Firm1", "Ann1"))
    assert q["type"] == "2hop" and q["answers"] == ["Town1"] and q["gold_doc_ids"] == [[firm], [ann]]
    assert [h["query"] for h in q["hops"]] == ["Firm1", "Ann1"] and q["hops"][1]["answer"] == "Town1"
    assert stats["skipped"] == {"blank_line": 1}


def test_hotpotqa_questions_sharing_a_gold_paragraph_stay_in_one_split(tmp_path):
    rows = []
    for i in range(40):
        r = _hotpot_row(i)
        if i % 4 == 0:  # every fourth question shares its first gold paragraph with the next one
            r["contexts"][0] = {**_hotpot_row(i + 1)["contexts"][0]}
        rows.append(r)
    path = tmp_path / "hotpot.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in range(5):
        _, files, _ = load_qa_source(_spec("hotpotqa", path, val_fraction=0.2, test_fraction=0.3), seed=seed)
        gold = {name: {d for q in qs for hop in q["gold_doc_ids"] for d in hop} for name, qs in files.items()}
        assert not gold["train"] & gold["test"] and not gold["train"] & gold["val"] and not gold["val"] & gold["test"]
        assert sum(map(len, files.values())) == 40


def test_hotpotqa_bad_rows_name_the_line(tmp_path):
    path = tmp_path / "hotpot.jsonl"
    lines = [json.dumps(_hotpot_row(0)), "{oops", json.dumps(_hotpot_row(2, n_sup=1)),
             json.dumps({**_hotpot_row(3), "question_text": ""})]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=rf"{path}:2: malformed JSON"):
        load_qa_source(_spec("hotpotqa", path), seed=1)
    docs, files, stats = load_qa_source(_spec("hotpotqa", path, on_error="skip"), seed=1)
    assert stats["skipped"] == {"malformed_json": 1, "malformed_row": 1, "missing_field": 1}
    assert [q["id"] for qs in files.values() for q in qs] == ["hotpotqa-h0"]
    assert {d["title"] for d in docs} == {"Firm0", "Noise", "Ann0"}  # a skipped row adds no documents
    path.write_text(lines[2] + "\n")
    with pytest.raises(SourceError, match=rf"{path}:1: needs exactly 2 supporting paragraphs, has 1"):
        load_qa_source(_spec("hotpotqa", path), seed=1)
    row = _hotpot_row(0)
    row["contexts"][2]["is_supporting"] = "yes"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(SourceError, match=rf"{path}:1: contexts\[2\]\.is_supporting must be true or false"):
        load_qa_source(_spec("hotpotqa", path), seed=1)
    path.write_text(json.dumps({**_hotpot_row(0), "question_id": None}) + "\n")
    with pytest.raises(SourceError, match=rf"{path}:1: question_id must be"):
        load_qa_source(_spec("hotpotqa", path), seed=1)


def test_hotpotqa_official_json_layout(tmp_path):
    rows = [{"_id": "a1", "question": "Which city is Ann from?", "answer": "Town", "type": "bridge",
             "supporting_facts": [["Firm", 0], ["Ann", 0]],
             "context": [["Firm", ["Firm was founded ", "by Ann."]], ["Ann", ["Ann is from Town."]],
                         ["Other", ["Unrelated."]]]}]
    docs, files, _ = load_qa_source(_spec("hotpotqa", _write(tmp_path / "dev.json", rows), val_fraction=0.0,
                                          test_fraction=0.0), seed=1)
    (q,) = files["train"]
    assert [d["text"] for d in docs] == ["Firm was founded by Ann.", "Ann is from Town.", "Unrelated."]
    assert q["gold_doc_ids"] == [[docs[0]["id"]], [docs[1]["id"]]] and q["answers"] == ["Town"]
    rows[0]["context"][0][1].append(None)
    with pytest.raises(SourceError, match=r"\[0\]: context\[0\] must be \[title, \[sentences as strings\]\]"):
        load_qa_source(_spec("hotpotqa", _write(tmp_path / "bad.json", rows)), seed=1)


def test_prepare_puts_qa_paragraphs_in_the_kb_and_questions_beside_or_instead_of_the_worlds(tmp_path):
    path = _write(tmp_path / "dev.json", SQUAD)
    p = copy.deepcopy(DEFAULTS)
    p["world"].update(n_people=40, n_cities=6, n_countries=2, n_companies=6, n_universities=3)
    p["real_text"]["python_docs"] = False
    p["sources"] = [{"type": "squad", "path": str(path), "test_fraction": 0.5, "val_fraction": 0.0}]
    out = tmp_path / "out"
    summary = prepare_documents(p, out / "documents.jsonl", out / "corpus", out / "qa")
    kb = [json.loads(x) for x in (out / "documents.jsonl").read_text().splitlines()]
    assert sum(d["id"].startswith("squad:") for d in kb) == 3
    corpus = "".join(f.read_text() for f in (out / "corpus").glob("*.jsonl"))
    assert "pendulum" not in corpus  # KB only: pretraining never reads the QA paragraphs
    qa = {s: [json.loads(x) for x in (out / "qa" / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "val", "test")}
    squad = [q for qs in qa.values() for q in qs if q.get("dataset") == "squad"]
    assert len(squad) == 4 and any(not q.get("dataset") for q in qa["train"])  # beside the world's
    assert summary["sources"][0]["questions"] == {name: sum(q.get("dataset") == "squad" for q in qs)
                                                  for name, qs in qa.items()}
    p["questions"]["world"] = False
    prepare_documents(p, out / "documents.jsonl", out / "corpus", out / "qa")
    qa = [json.loads(x) for s in ("train", "val", "test") for x in (out / "qa" / f"{s}.jsonl").read_text().splitlines()]
    assert sorted(q["id"] for q in qa) == ["squad-q1", "squad-q2", "squad-q3", "squad-q4"]  # instead of
    p["sources"] = []
    with pytest.raises(ValueError, match="documents.questions.world is false and no squad/hotpotqa source"):
        prepare_documents(p, out / "documents.jsonl", out / "corpus", out / "qa")
