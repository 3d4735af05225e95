"""`nanochat serve` over HTTP: the chat streams NDJSON events, documents added through the API
are searched by the next question and persist on disk, bad requests get a 4xx with a
readable error (never a traceback), and 20 parallel questions while documents are being
added all complete with no document lost."""
import json
import threading

import pytest
import torch
from fakes import BiasedGPT, distinct_city, on_file, scripted, tiny_config
from fastapi.testclient import TestClient

from nanochat_core.data.world import build_world
from nanochat_core.retrieval import KnowledgeBase
from nanochat_core.serve import create_app
from nanochat_core.tokenizer import Tokenizer

NEW = {"title": "Quorvex Tamblin", "text": "Quorvex Tamblin was born in Zanzibarre and builds clocks."}


@pytest.fixture(scope="module")
def world_tok():
    world = build_world(4, n_people=30, n_cities=5, n_countries=2, n_companies=5, n_universities=3)
    docs = on_file(world.kb_documents())  # the scripted models answer "Zed"
    tok = Tokenizer.train(iter([d["text"] for d in docs] * 3 + [NEW["text"]] * 3), vocab_size=600)
    return world, docs, tok


@pytest.fixture
def server(world_tok, tmp_path):
    world, docs, tok = world_tok
    kb = KnowledgeBase.build(docs, tmp_path / "kb", ["bm25"])
    cfg = tiny_config(tok)
    torch.manual_seed(0)
    model = BiasedGPT(cfg, after=scripted(tok, " Zed [1]")).eval()  # answers "Zed", citing [1]
    app = create_app(model, tok, kb, defaults={"mode": "rag"}, checkpoint="ckpt")
    return TestClient(app, raise_server_exceptions=False), kb, tmp_path / "kb", docs


def events(resp):
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in resp.text.splitlines()]


def test_the_page_and_info(server):
    client, kb, _, docs = server
    page = client.get("/")
    assert page.status_code == 200 and 'id="question"' in page.text and "/api/chat" in page.text
    info = client.get("/api/info").json()
    assert info["documents"] == len(docs) and info["defaults"]["mode"] == "rag"


def test_chat_streams_searches_sources_tokens_and_a_resolved_citation(server):
    client, kb, _, docs = server
    q = f"Where was {docs[0]['title']} born?"
    evs = events(client.post("/api/chat", json={"question": q, "k": 2}))
    assert [e["event"] for e in evs[:2]] == ["search", "sources"] and evs[0]["query"] == q
    assert len(evs[1]["sources"]) == 2
    assert any(e["event"] == "token" for e in evs) and evs[-1]["event"] == "done"
    done = evs[-1]
    assert done["answer"] == "Zed" and done["citations"][0]["id"] == evs[1]["sources"][0]["id"]
    doc = client.get(f"/api/documents/{done['citations'][0]['id']}").json()
    assert doc["text"] == kb.get(done["citations"][0]["id"])["text"]
    closed = events(client.post("/api/chat", json={"question": q, "mode": "closed_book"}))
    assert [e["event"] for e in closed if e["event"] in ("search", "sources")] == []


def test_an_added_document_is_searched_by_the_next_question_and_kept_on_disk(server):
    client, kb, kb_dir, docs = server
    r = client.post("/api/documents", json={"documents": [NEW]})
    assert r.status_code == 200, r.text
    (new_id,) = r.json()["added"]
    assert r.json()["documents"] == len(docs) + 1
    done = events(client.post("/api/chat", json={"question": "Where was Quorvex Tamblin born?"}))[-1]
    assert done["citations"][0] == {"n": 1, "id": new_id, "title": NEW["title"], "hop": 1}
    assert new_id in {d["id"] for d in KnowledgeBase.load(kb_dir).docs}  # written, not only in memory
    assert client.post("/api/documents", json={"documents": [NEW]}).status_code == 409  # same id again
    assert client.delete(f"/api/documents/{new_id}").json() == {"removed": new_id, "documents": len(docs)}
    assert client.get(f"/api/documents/{new_id}").status_code == 404
    assert new_id not in {d["id"] for d in KnowledgeBase.load(kb_dir).docs}


@pytest.mark.parametrize("method,path,body,status,says", [
    ("post", "/api/chat", {"question": ""}, 400, "empty"),
    ("post", "/api/chat", {"question": "   "}, 400, "empty"),
    ("post", "/api/chat", {}, 400, "empty"),
    ("post", "/api/chat", {"question": "x" * 2001}, 413, "limit is 2000"),
    ("post", "/api/chat", {"question": 7}, 400, "empty"),
    ("post", "/api/chat", {"question": "Who?", "mode": "oracle"}, 400, "mode"),
    ("post", "/api/chat", {"question": "Who?", "k": 0}, 400, "k: must be an integer from 1 to 16"),
    ("post", "/api/chat", {"question": "Who?", "k": "3"}, 400, "k: must be"),
    ("post", "/api/chat", {"question": "Who?", "max_hops": 9}, 400, "max_hops"),
    ("post", "/api/chat", {"question": "Who?", "history": "no"}, 400, "history"),
    ("post", "/api/chat", {"question": "Who?", "temperature": 2}, 400, "unknown field"),
    ("post", "/api/chat", b"{not json", 400, "not valid JSON"),
    ("post", "/api/chat", b"\xff\xfe", 400, "not valid JSON"),
    ("post", "/api/chat", [1, 2], 400, "JSON object"),
    ("post", "/api/chat", b"x" * 2_000_001, 413, "bytes; the limit"),
    ("get", "/api/documents/no-such-doc", None, 404, "no document 'no-such-doc'"),
    ("delete", "/api/documents/no-such-doc", None, 404, "no document 'no-such-doc'"),
    ("post", "/api/documents", {}, 400, "non-empty list"),
    ("post", "/api/documents", {"documents": [{"title": "t", "text": ""}]}, 400, r"documents\[0\]: needs a non-empty 'text'"),
    ("post", "/api/documents", {"documents": ["text"]}, 400, r"documents\[0\]"),
    ("post", "/api/documents", {"documents": [{"text": "y" * 20001}]}, 413, "limit is 20000"),
    ("post", "/api/documents", {"documents": [{"text": "z"}] * 101}, 413, "limit is 100"),
    ("post", "/api/documents", {"documents": [{"text": "z", "title": None}]}, 400, "'title' and 'id' must be strings"),
    ("post", "/api/documents", {"documents": [{"text": "z", "id": 5}]}, 400, "'title' and 'id' must be strings"),
    ("post", "/api/documents", {"documents": [{"text": "z", "title": "t" * 501}]}, 413, "title has 501 characters"),
    ("post", "/api/chat", {"question": "Who?", "history": [["q" * 2001, "a"]]}, 413, "history: each"),
    ("post", "/api/nothing-here", {}, 404, "Not Found"),
])
def test_bad_requests_get_a_clear_4xx_and_no_traceback(server, method, path, body, status, says):
    import re
    client = server[0]
    kw = {"content": body} if isinstance(body, bytes) else ({"json": body} if body is not None else {})
    r = getattr(client, method)(path, **kw) if method != "delete" else client.delete(path)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert re.search(says, err), err
    assert "Traceback" not in r.text


def test_a_failed_kb_write_leaves_the_old_kb_on_disk(server, monkeypatch):
    client, kb, kb_dir, docs = server
    import nanochat_core.retrieval.kb as kbmod

    def crash(*a, **kw):
        raise OSError("disk full")
    monkeypatch.setattr(kbmod, "write_documents", crash)
    r = client.post("/api/documents", json={"documents": [NEW]})
    assert r.status_code == 500 and "Traceback" not in r.text and "OSError" in r.json()["error"]
    assert [d["id"] for d in KnowledgeBase.load(kb_dir).docs] == [d["id"] for d in docs]
    assert client.get("/api/info").json()["documents"] == len(docs)  # memory agrees with the disk
    monkeypatch.undo()
    r = client.post("/api/documents", json={"documents": [NEW]})
    assert r.status_code == 200  # and it can be retried
    new_id = r.json()["added"][0]
    monkeypatch.setattr(kbmod, "write_documents", crash)
    r = client.delete(f"/api/documents/{new_id}")  # a failed remove keeps the document, on disk and in memory
    assert r.status_code == 500 and "Traceback" not in r.text
    assert client.get(f"/api/documents/{new_id}").status_code == 200
    assert new_id in {d["id"] for d in KnowledgeBase.load(kb_dir).docs}


def test_twenty_parallel_questions_while_documents_are_added(world_tok, tmp_path):
    """A real server on a socket: every answer completes and every added document is kept."""
    import socket

    import httpx
    import uvicorn
    world, docs, tok = world_tok
    kb = KnowledgeBase.build(docs, tmp_path / "kb", ["bm25"])
    cfg = tiny_config(tok)
    city = distinct_city(world, tok)
    # it searches once more before answering, so the search tool reads the KB while adds write it (for a
    # city hop 1 need not show: copy False, or the copy guard would not let it)
    model = BiasedGPT(cfg, after=scripted(tok, " Zed [1]", search=" " + city)).eval()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(model, tok, kb, {"mode": "refrag", "copy": False}), host="127.0.0.1", port=port,
                                        log_level="error"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(url + "/api/info", timeout=1)
            break
        except httpx.TransportError:
            threading.Event().wait(0.1)
    results, added, errors = [None] * 20, [], []

    def ask(i):
        try:
            r = httpx.post(url + "/api/chat", json={"question": f"Where was {docs[i]['title']} born?"}, timeout=120)
            results[i] = [json.loads(x) for x in r.text.splitlines()]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    def add(j):
        try:
            r = httpx.post(url + "/api/documents", json={"documents": [{"id": f"new-{j}", "text": f"Document {j} about clocks."}]},
                           timeout=120)
            assert r.status_code == 200, r.text
            added.append(f"new-{j}")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)] + \
              [threading.Thread(target=add, args=(j,)) for j in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    srv.should_exit = True
    th.join(10)
    assert not errors, errors
    for i, evs in enumerate(results):
        assert evs and evs[-1]["event"] == "done" and evs[-1]["answer"] == "Zed", (i, evs and evs[-1])
        assert evs[-1]["hops"] == 2 and evs[-1]["queries"][1] == city
    ids = {d["id"] for d in KnowledgeBase.load(tmp_path / "kb").docs}
    assert sorted(added) == sorted(f"new-{j}" for j in range(10)) and set(added) <= ids
    assert len(ids) == len(docs) + 10
