"""`nanochat kb ...` and `nanochat eval beir`, run in-process through the real entry point."""
import json

import pytest

from nanochat_core.cli import main


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


DOCS = [
    {"id": "tower", "title": "Eiffel Tower", "text": "A wrought-iron lattice tower in Paris."},
    {"id": "bees", "title": "Honey bees", "content": "Bees pollinate flowers and make honey."},  # seeds' field name
    {"id": "desert", "title": "Sahara", "text": "The largest hot desert, in North Africa."},
    {"id": "volcano", "title": "Volcanoes", "text": "Magma reaches the surface and erupts."},
]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_kb_build_search_add_remove_info(tmp_path, capsys):
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    kb = str(tmp_path / "kb")
    rc, out, _ = run(capsys, "kb", "build", "--documents", str(docs), "--output", kb, "--retrievers", "bm25,tfidf")
    assert rc == 0 and "4 documents" in out

    rc, out, _ = run(capsys, "kb", "search", kb, "iron tower in Paris", "-k", "2")
    lines = out.splitlines()
    assert rc == 0 and "[bm25]" in lines[0]  # no dense index: the first retriever, not hybrid
    assert lines[1].split()[0] == "1." and "tower" in lines[1] and "Eiffel Tower" in lines[1]
    float(lines[1].split()[1])  # a score

    rc, out, _ = run(capsys, "kb", "search", kb, "honey", "--retriever", "tfidf", "--json")
    hits = json.loads(out)[0]["hits"]
    assert hits[0]["id"] == "bees" and hits[0]["title"] == "Honey bees" and hits[0]["score"] > 0

    new = write_jsonl(tmp_path / "new.jsonl", [{"id": "glacier", "title": "Glaciers", "text": "Rivers of ice carve valleys."}])
    rc, out, _ = run(capsys, "kb", "add", kb, "--documents", str(new))
    assert rc == 0 and "now has 5" in out
    rc, out, _ = run(capsys, "kb", "search", kb, "ice valleys", "--json")
    assert json.loads(out)[0]["hits"][0]["id"] == "glacier"

    rc, out, _ = run(capsys, "kb", "remove", kb, "--ids", "glacier,bees")
    assert rc == 0 and "now has 3" in out
    rc, out, _ = run(capsys, "kb", "search", kb, "ice valleys honey", "--json")
    assert json.loads(out)[0]["hits"] == []

    rc, out, _ = run(capsys, "kb", "info", kb)
    info = json.loads(out)
    assert rc == 0 and info["num_documents"] == 3 and set(info["retrievers"]) == {"bm25", "tfidf"}


def test_kb_build_with_dense_defaults_to_hybrid(tmp_path, capsys):
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    kb = str(tmp_path / "kb")
    assert run(capsys, "kb", "build", "--documents", str(docs), "--output", kb, "--retrievers", "all")[0] == 0
    rc, out, _ = run(capsys, "kb", "search", kb, "insects that make a sweet food", "-k", "1")
    assert rc == 0 and "[hybrid]" in out and "bees" in out
    info = json.loads(run(capsys, "kb", "info", kb)[1])
    assert info["embedding_model"]["name"] == "all-MiniLM-L6-v2"


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(DOCS[0]) + "\n" + '{"id": "x", "text": ""}\n')
    rc, _, err = run(capsys, "kb", "build", "--documents", str(bad), "--output", str(tmp_path / "kb"), "--retrievers", "bm25")
    assert rc == 2 and f"{bad}:2" in err and "empty text" in err and "Traceback" not in err
    # the same file under the skip policy: built, and the skip is reported
    rc, _out, err = run(capsys, "kb", "build", "--documents", str(bad), "--output", str(tmp_path / "kb"),
                       "--retrievers", "bm25", "--on-error", "skip")
    assert rc == 0 and "skipped 1 (1 empty_text)" in err
    rc, _, err = run(capsys, "kb", "search", str(tmp_path / "missing"), "q")
    assert rc == 2 and "no KB at" in err
    rc, _, err = run(capsys, "kb", "remove", str(tmp_path / "kb"), "--ids", "nope")
    assert rc == 2 and "not in KB" in err
    rc, _, err = run(capsys, "eval", "beir", "--data", str(tmp_path), "--retriever", "bm25")
    assert rc == 2 and "corpus.jsonl is missing" in err
    with pytest.raises(SystemExit):
        main(["kb", "build", "--documents", "x"])  # argparse: --output is required


def test_eval_beir_on_a_tiny_beir_directory(tmp_path, capsys):
    d = tmp_path / "tiny"
    (d / "qrels").mkdir(parents=True)
    write_jsonl(d / "corpus.jsonl", [{"_id": r["id"], "title": r["title"], "text": r.get("text", r.get("content"))} for r in DOCS])
    write_jsonl(d / "queries.jsonl", [{"_id": "q1", "text": "tower in Paris"}, {"_id": "q2", "text": "hot desert"},
                                      {"_id": "q3", "text": "not judged"}])
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ttower\t1\nq2\tdesert\t2\n")
    rc, out, _ = run(capsys, "eval", "beir", "--data", str(d), "--retriever", "bm25", "--json")
    res = json.loads(out)
    assert rc == 0 and res["num_queries"] == 2 and res["num_docs"] == 4
    assert res["ndcg@10"] == 1.0 and res["recall@100"] == 1.0 and res["mrr@10"] == 1.0
    rc, out, _ = run(capsys, "eval", "beir", "--data", str(d), "--retriever", "tfidf")
    assert rc == 0 and "nDCG@10     1.0000" in out and "recall@100" in out and "MRR@10" in out
    rc, out, _ = run(capsys, "eval", "beir", "--data", str(d), "--retriever", "hybrid", "--json")
    assert rc == 0 and json.loads(out)["ndcg@10"] == 1.0  # bm25 + dense, indexed in memory
