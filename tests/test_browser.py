"""The chat page in a real headless Chromium (Debian's, driven by Playwright): ask, watch the
answer stream in, follow a citation to its document, add a document through the page, ask
about it and see it cited. Skips, saying why, where no browser can be had.

The default test serves a scripted model (it always answers "Zed [1]"), so what is tested is
the page, the server and the live KB. The slow test does the same with the pipeline's own
trained checkpoint and writes the README's screenshot (docs/chat.png):
    pytest -m slow tests/test_browser.py
"""
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from fakes import BiasedGPT, on_file, scripted, tiny_config

from nanochat_core.retrieval import KnowledgeBase
from nanochat_core.serve import create_app

ROOT = Path(__file__).resolve().parents[1]


def _chromium():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    exe = os.environ.get("NANOCHAT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("no Chromium on this machine: `apt-get install chromium` (.ci/run does where it can)")
    return exe


def _serve(app):
    import uvicorn
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    return srv, th, f"http://127.0.0.1:{port}"


# Records every text the answer box shows, so the test can tell a streamed answer from one
# that appeared whole.
WATCH = """() => {
  window.__shown = [];
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) window.__shown.push(n.textContent);
  }).observe(document.getElementById("log"), {childList: true, subtree: true});
}"""


def run_page(url, exe, question, new_doc, new_question, screenshot=None, last_question=None):
    """Drive the page; returns what it saw. Asserts the steps a user would check by eye."""
    from playwright.sync_api import sync_playwright
    seen = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 720})
            page.goto(url)
            page.wait_for_function("document.getElementById('info').textContent.includes('documents')")
            page.evaluate(WATCH)
            page.fill("#question", question)
            page.click("#send")
            page.wait_for_selector(".turn:nth-child(1) .a[data-done]", timeout=120_000)
            seen["shown"] = page.evaluate("window.__shown")
            seen["streamed"] = int(page.get_attribute(".turn:nth-child(1) .a", "data-streamed") or 0)
            seen["steps"] = page.inner_text(".turn:nth-child(1) .steps")
            seen["answer"] = page.inner_text(".turn:nth-child(1) .a")
            cite = page.query_selector(".turn:nth-child(1) .a a.cite")
            seen["cite_title"] = cite.get_attribute("title") if cite else None
            if cite:
                cite.click()
                page.wait_for_selector("#doc-title-shown")
                seen["doc_shown"] = page.inner_text("#doc")
            # add a document through the page, then ask about it
            page.click("#kbpanel summary")
            page.fill("#doc-title", new_doc["title"])
            page.fill("#doc-text", new_doc["text"])
            page.click("#doc-add")
            page.wait_for_function("document.getElementById('doc-status').textContent.length > 0")
            seen["add_status"] = page.inner_text("#doc-status")
            page.fill("#question", new_question)
            page.click("#send")
            page.wait_for_selector(".turn:nth-child(2) .a[data-done]", timeout=120_000)
            seen["answer2"] = page.inner_text(".turn:nth-child(2) .a")
            cite2 = page.query_selector(".turn:nth-child(2) .a a.cite")
            seen["cite2_title"] = cite2.get_attribute("title") if cite2 else None
            if cite2:
                cite2.click()
                page.wait_for_function(f"document.getElementById('doc').textContent.includes({new_doc['text'][:30]!r})")
                seen["doc2_shown"] = page.inner_text("#doc")
            if last_question:  # one more, for the screenshot
                page.fill("#question", last_question)
                page.click("#send")
                page.wait_for_selector(".turn:nth-child(3) .a[data-done]", timeout=120_000)
                seen["steps3"] = page.inner_text(".turn:nth-child(3) .steps")
                seen["answer3"] = page.inner_text(".turn:nth-child(3) .a")
            if screenshot:
                page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    return seen


def test_chat_page_in_a_real_browser(tmp_path):
    exe = _chromium()
    from nanochat_core.data.world import build_world
    from nanochat_core.tokenizer import Tokenizer
    world = build_world(5, n_people=30, n_cities=5, n_countries=2, n_companies=5, n_universities=3)
    docs = on_file(world.kb_documents())  # the scripted model answers "Zed"
    new = {"title": "Quorvex Tamblin", "text": "Quorvex Tamblin was born in Zanzibarre and builds clocks."}
    tok = Tokenizer.train(iter([d["text"] for d in docs] * 3 + [new["text"]] * 3), vocab_size=600)
    kb = KnowledgeBase.build(docs, tmp_path / "kb", ["bm25"])
    cfg = tiny_config(tok)
    torch.manual_seed(0)
    model = BiasedGPT(cfg, after=scripted(tok, " Zed [1]")).eval()
    srv, th, url = _serve(create_app(model, tok, kb, {"mode": "rag"}))
    person = next(d for d in docs if d["id"].startswith("person-"))
    try:
        seen = run_page(url, exe, f"Where was {person['title']} born?", new, "Where was Quorvex Tamblin born?",
                        screenshot=tmp_path / "chat.png")
    finally:
        srv.should_exit = True
        th.join(10)
    top = kb.search([f"Where was {person['title']} born?"], k=1, retriever="bm25")[0][0].doc_id
    assert "search 1: Where was" in seen["steps"] and kb.get(top)["title"] in seen["steps"]
    assert seen["answer"] == "Zed [1]"
    # " Zed", " [", "1", "]": the page showed each token as it came ("Zed [" is never a piece of
    # the finished answer's markup, which is "Zed " then a link)
    assert seen["streamed"] == len(tok.encode(" Zed [1]"))
    assert "Zed [" in seen["shown"], f"the answer appeared whole, not streamed: {seen['shown']}"
    assert seen["cite_title"] == kb.get(top)["title"] and kb.get(top)["text"] in seen["doc_shown"]
    assert seen["add_status"].startswith("added user-")
    assert seen["cite2_title"] == new["title"] and new["text"] in seen["doc2_shown"]
    assert (tmp_path / "chat.png").stat().st_size > 10_000


@pytest.mark.slow
def test_chat_page_with_the_trained_model(monkeypatch):
    """The same walk with the pipeline's checkpoint (run `dvc repro` first); saves docs/chat.png."""
    exe = _chromium()
    import json

    from nanochat_core import chat
    monkeypatch.chdir(ROOT)
    ckpt, tok_path, kb_dir = chat.default_paths()
    qa = ROOT / "data" / "qa" / "test.jsonl"
    if not qa.is_file() or not (Path(kb_dir) / "manifest.json").is_file():
        pytest.skip("needs the pipeline's outputs: run `dvc repro` first")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "nanochat-browser-kb"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(kb_dir, tmp)  # the page edits a copy, never the pipeline's KB
    model, tok, kb, _ = chat.load(ckpt, tok_path, tmp, "refrag")
    qs = [json.loads(line) for line in qa.read_text().splitlines()]
    q = next(q for q in qs if q["type"] == "single" and q["entity_split"] == "test" and q["relation"] == "person.born_in")
    # for the screenshot: the file's first 2-hop question on which the model searches again
    # (chosen by that alone, not by its answer; the README says how it came out)
    two_hop = next(q for q in qs if q["type"] == "2hop" and chat.answer(model, tok, q["question"], kb=kb)["hops"] > 1)
    # a new person, written the way the world's documents are
    city = next(d for d in kb.docs if d["id"].startswith("city-"))["title"]
    new = {"title": "Quorvex Tamblin", "text": f"Quorvex Tamblin was born in {city}."}
    srv, th, url = _serve(create_app(model, tok, kb, {"mode": "refrag"}, checkpoint=ckpt))
    try:
        seen = run_page(url, exe, q["question"], new, "Where was Quorvex Tamblin born?",
                        screenshot=ROOT / "docs" / "chat.png", last_question=two_hop["question"])
    finally:
        srv.should_exit = True
        th.join(10)
    print(json.dumps({**seen, "two_hop_gold": two_hop["answers"]}, indent=1))  # what the page showed, for -s
    assert seen["cite_title"], seen
    assert seen["cite2_title"] == new["title"], seen
