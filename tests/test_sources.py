"""Real-text sources: each bad input gets a clear message; nothing is dropped silently."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat_core.data.sources import SourceError, load_source, python_docs


def test_missing_path_names_the_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    for stype in ("jsonl", "text", "dir", "parquet"):
        with pytest.raises(SourceError) as e:
            load_source({"type": stype, "path": str(missing)})
        assert "nope.jsonl" in str(e.value) and "does not exist" in str(e.value) and "fix the path" in str(e.value)


def test_latin1_text_fed_as_utf8(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_bytes("Un café à Paris.\n".encode("latin-1"))
    with pytest.raises(SourceError) as e:
        load_source({"type": "text", "path": str(f)})
    msg = str(e.value)
    assert "notes.txt" in msg and "not valid utf-8" in msg and "iconv" in msg and "encoding" in msg
    assert "line 1" in msg
    docs, stats = load_source({"type": "text", "path": str(f), "encoding": "latin-1"})
    assert [d["text"] for d in docs] == ["Un café à Paris."]
    assert docs[0]["source"] == str(f) and stats["documents"] == 1


def test_malformed_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "thr\n', encoding="utf-8")
    with pytest.raises(SourceError) as e:
        load_source({"type": "jsonl", "path": str(f)})
    assert f"{f}:3" in str(e.value) and "malformed JSON" in str(e.value)


def test_jsonl_without_text_field_lists_fields(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"body": "x", "id": 1}\n', encoding="utf-8")
    with pytest.raises(SourceError) as e:
        load_source({"type": "jsonl", "path": str(f)})
    msg = str(e.value)
    assert f"{f}:1" in msg and "'text'" in msg and "body, id" in msg and "text_field" in msg
    docs, _ = load_source({"type": "jsonl", "path": str(f), "text_field": "body", "name": "mine"})
    assert docs == [{"id": "mine:rows.jsonl:1", "title": "", "text": "x", "source": str(f), "metadata": {"line": 1}}]


def test_jsonl_skips_are_counted(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "a", "title": "A"}\n\n{"text": ""}\n{"text": null}\n{"text": "b"}\n', encoding="utf-8")
    docs, stats = load_source({"type": "jsonl", "path": str(f)})
    assert [d["text"] for d in docs] == ["a", "b"] and docs[0]["title"] == "A"
    assert stats["skipped"] == {"blank_line": 1, "empty_text": 2}
    f.write_text('[1, 2]\n', encoding="utf-8")
    with pytest.raises(SourceError, match="expected a JSON object"):
        load_source({"type": "jsonl", "path": str(f)})
    f.write_text('{"text": "a", "id": 7}\n{"text": "b", "id": 7}\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"rows.jsonl:2: duplicate 'id' '7' \(first at line 1\)"):
        load_source({"type": "jsonl", "path": str(f)})


def test_parquet_round_trip(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.table({"text": ["alpha text", None, "beta text"], "title": ["A", "N", "B"]}),
                   shards / "shard_00000.parquet")
    pq.write_table(pa.table({"text": ["gamma text"], "title": ["G"]}), shards / "shard_00001.parquet")
    docs, stats = load_source({"type": "parquet", "path": str(shards)})
    assert [(d["title"], d["text"]) for d in docs] == [("A", "alpha text"), ("B", "beta text"), ("G", "gamma text")]
    assert len({d["id"] for d in docs}) == 3
    assert stats["files"] == 2 and stats["skipped"] == {"empty_text": 1}
    one, _ = load_source({"type": "parquet", "path": str(shards / "shard_00001.parquet")})
    assert [d["text"] for d in one] == ["gamma text"]


def test_parquet_without_text_column_lists_columns(tmp_path):
    f = tmp_path / "data.parquet"
    pq.write_table(pa.table({"body": ["x"], "url": ["u"]}), f)
    with pytest.raises(SourceError) as e:
        load_source({"type": "parquet", "path": str(f)})
    msg = str(e.value)
    assert "data.parquet" in msg and "no column 'text'" in msg and "body, url" in msg and "text_field" in msg
    docs, _ = load_source({"type": "parquet", "path": str(f), "text_field": "body"})
    assert docs[0]["text"] == "x"
    bad = tmp_path / "fake.parquet"
    bad.write_text("not parquet")
    with pytest.raises(SourceError, match="fake.parquet: not a readable parquet file"):
        load_source({"type": "parquet", "path": str(bad)})


def test_empty_directory_is_refused(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(SourceError) as e:
        load_source({"type": "dir", "path": str(d)})
    assert "empty" in str(e.value) and "no files matching" in str(e.value)
    with pytest.raises(SourceError, match="no \\*.parquet files"):
        load_source({"type": "parquet", "path": str(d)})


def test_directory_reads_each_kind_and_counts_skips(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("First file.\n", encoding="utf-8")
    (d / "sub" / "b.md").write_text("Second file.", encoding="utf-8")
    (d / "c.jsonl").write_text(json.dumps({"text": "Third row."}) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": ["Fourth row."]}), d / "e.parquet")
    (d / "empty.txt").write_text("  \n", encoding="utf-8")
    (d / ".hidden").write_text("secret", encoding="utf-8")
    docs, stats = load_source({"type": "dir", "path": str(d)})
    assert sorted(x["text"] for x in docs) == ["First file.", "Fourth row.", "Second file.", "Third row."]
    assert stats["skipped"] == {"empty_file": 1, "hidden_file": 1}
    assert len({x["id"] for x in docs}) == 4 and all(x["id"].startswith("docs:") for x in docs)
    paras = tmp_path / "p.txt"
    paras.write_text("One.\n\nTwo.\n\n\n\nThree.", encoding="utf-8")
    docs, stats = load_source({"type": "text", "path": str(paras), "split": "paragraph"})
    assert [x["text"] for x in docs] == ["One.", "Two.", "Three."] and stats["skipped"] == {"empty_paragraph": 1}


@pytest.mark.parametrize("spec, needle", [
    ({"type": "csv", "path": "x"}, "type: unknown source type 'csv'; valid types are python_docs, jsonl"),
    ({"type": "jsonl", "path": "x", "colum": "t"}, "colum: unknown key for a jsonl source"),
    ({"type": "jsonl"}, "path: a jsonl source needs a path"),
    ({"type": "text", "path": "x", "encoding": "klingon"}, "encoding: unknown encoding 'klingon'"),
    ({"type": "python_docs", "max_chars": "10"}, "max_chars: expected int, got str"),
    ({"type": "text", "path": "x", "split": "line"}, "split: must be one of file, paragraph"),
])
def test_bad_specs(spec, needle):
    with pytest.raises(ValueError) as e:
        load_source(spec, "documents.sources[2]")
    assert str(e.value).startswith("documents.sources[2].") and needle in str(e.value)


def test_python_docs_default_real_text():
    a, stats = python_docs(max_chars=60_000)
    b, _ = python_docs(max_chars=60_000)
    assert a == b and len(a) > 5
    total = sum(len(d["text"]) for d in a)
    assert 40_000 < total <= 60_000 and stats["chars"] == total
    assert {d["metadata"]["kind"] for d in a} == {"topic", "docstring"}
    assert all(d["source"] == "python_docs" and d["text"].strip() for d in a)
    assert len({d["id"] for d in a}) == len(a)
    assert stats["skipped"]["over_max_chars"] > 0  # the cap is reported, not silent
    small, _ = python_docs(max_chars=5_000)
    assert sum(len(d["text"]) for d in small) <= 5_000
    assert [d["id"] for d in small] == [d["id"] for d in a[:len(small)]]
    assert any("assert" in d["text"] for d in a)  # real Python documentation
