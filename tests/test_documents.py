"""Document schema, validating loader (every bad input names file and line), chunking."""
import json

import pytest

from nanochat_core.data.documents import (
    MAX_DOC_CHARS,
    DocumentError,
    chunk_documents,
    iter_jsonl,
    load_documents,
    parent_id,
    write_documents,
)


def write_lines(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def row(**kw):
    return json.dumps(kw)


def test_load_accepts_schema_and_aliases(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [
        row(id="a", title="A", text="alpha", source="s", metadata={"k": 1}),
        row(_id="b", title="B", text="beta"),              # BEIR
        row(id="c", content="gamma", lang="en"),           # seeds' `content`; unknown field kept
        "",                                                # blank line is not a row
    ])
    docs = load_documents(p)
    assert docs == [
        {"id": "a", "title": "A", "text": "alpha", "source": "s", "metadata": {"k": 1}},
        {"id": "b", "title": "B", "text": "beta", "source": "", "metadata": {}},
        {"id": "c", "title": "", "text": "gamma", "source": "", "metadata": {"lang": "en"}},
    ]


BAD_ROWS = [
    # (bad line, reason, words the message must contain)
    ('{"id": "x", "text": ', "malformed_json", "malformed JSON"),
    ('["not", "an", "object"]', "malformed_json", "expected a JSON object"),
    (row(title="t", text="no id"), "missing_field", "missing field 'id'"),
    (row(id="x", title="t"), "missing_field", "missing field 'text'"),
    (row(id=7, text="int id"), "wrong_type", "'id' must be a string, got int"),
    (row(id="x", text=["a", "list"]), "wrong_type", "'text' must be a string, got list"),
    (row(id="x", text="ok", title=3), "wrong_type", "'title' must be a string"),
    (row(id="x", text="ok", metadata="m"), "wrong_type", "'metadata' must be an object"),
    (row(id="x", text="   \n "), "empty_text", "empty text"),
    (b'{"id": "x", "text": "caf\xe9"}', "invalid_utf8", "invalid UTF-8"),
    (row(id="a", text="second a"), "duplicate_id", "duplicate id 'a' (first seen at line 1)"),
]


@pytest.mark.parametrize("bad,reason,words", BAD_ROWS, ids=[r[1] + str(i) for i, r in enumerate(BAD_ROWS)])
def test_bad_row_raises_naming_file_and_line(tmp_path, bad, reason, words):
    p = write_lines(tmp_path / "docs.jsonl", [row(id="a", text="first"), row(id="b", text="second"), bad])
    with pytest.raises(DocumentError) as e:
        load_documents(p)
    msg = str(e.value)
    assert f"{p}:3" in msg and words in msg


def test_skip_policy_counts_every_reason(tmp_path, caplog):
    p = write_lines(tmp_path / "docs.jsonl", [row(id="a", text="first")] + [b for b, _, _ in BAD_ROWS] + [row(id="z", text="last")])
    docs, report = load_documents(p, on_error="skip", return_report=True)
    assert [d["id"] for d in docs] == ["a", "z"]
    expected = {}
    for _, reason, _ in BAD_ROWS:
        expected[reason] = expected.get(reason, 0) + 1
    assert report.skipped == expected and report.loaded == 2 and report.num_skipped == len(BAD_ROWS)
    assert "skipped 11" in caplog.text  # logged, not silent


def test_huge_document_is_refused_with_its_size(tmp_path):
    p = write_lines(tmp_path / "big.jsonl", [row(id="big", text="x" * (MAX_DOC_CHARS + 1))])
    with pytest.raises(DocumentError, match=r"big.jsonl:1: .*10,000,001 characters.*split it"):
        load_documents(p)


def test_missing_file_and_iter_jsonl(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_documents(tmp_path / "nope.jsonl")
    p = write_lines(tmp_path / "q.jsonl", [row(a=1), "", row(a=2)])
    assert list(iter_jsonl(p)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_write_then_load_round_trip(tmp_path):
    docs = [{"id": "é", "title": "Ünïcode", "text": "line1\nline2 \"quoted\"", "source": "s", "metadata": {"n": [1, 2]}}]
    write_documents(tmp_path / "out.jsonl", docs)
    assert load_documents(tmp_path / "out.jsonl") == docs
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_chunking_overlap_and_mapping_back():
    words = [f"w{i}" for i in range(25)]
    doc = {"id": "d", "title": "T", "text": " ".join(words[:12]) + "\n\n" + " ".join(words[12:]), "source": "", "metadata": {"m": 1}}
    short = {"id": "s", "title": "S", "text": "just five words here now", "source": "", "metadata": {}}
    chunks = chunk_documents([doc, short], max_words=10, overlap=3)
    long_chunks = [c for c in chunks if parent_id(c) == "d"]
    # stride 7: windows start at words 0, 7, 14, 21; each shares 3 words with the one before
    # and adds at least one new word; the last one reaches the end
    assert [c["id"] for c in long_chunks] == ["d#0", "d#1", "d#2", "d#3"]
    assert [c["text"].split() for c in long_chunks] == [words[0:10], words[7:17], words[14:24], words[21:25]]
    assert "\n\n" in long_chunks[1]["text"]  # original whitespace kept inside a chunk
    assert all(c["metadata"]["m"] == 1 and c["title"] == "T" for c in long_chunks)
    # a document that fits keeps its id and still maps back
    assert chunks[-1]["id"] == "s" and parent_id(chunks[-1]) == "s" and chunks[-1]["text"] == short["text"]
    # every word of the long doc is in some chunk
    assert {w for c in long_chunks for w in c["text"].split()} == set(words)
    with pytest.raises(ValueError):
        chunk_documents([doc], max_words=5, overlap=5)
