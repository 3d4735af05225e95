"""`nanochat serve`: the chat in a browser (FastAPI), with a KB you can edit while it runs.

  GET    /                      the page (chat_ui.html)
  GET    /api/info              checkpoint, KB size, defaults
  POST   /api/chat              {"question", "mode"?, "k"?, "max_hops"?, "history"?} -> NDJSON events
                                (chat.py: search, sources, token, done; an error mid-answer is
                                {"event": "error", "error"})
  GET    /api/documents/{id}    one document
  POST   /api/documents         {"documents": [{"title", "text", "id"?}]} -> ids added
  DELETE /api/documents/{id}    removes it

Answers are generated one at a time (one model, two cores); the KB has its own lock, held
for every search and every edit, so documents can be added while answers stream, and an
added document is seen by the next search. Edits go through KnowledgeBase.add/remove, which
write the KB atomically: a crash mid-write leaves the old KB on disk.
Bad requests get a 4xx with {"error": "..."} and never a traceback.
"""
import asyncio
import hashlib
import json
import logging
import threading
from pathlib import Path

from nanochat_core.chat import MAX_QUESTION_CHARS, ChatError, answer_stream, check_question
from nanochat_core.inference import MODES

log = logging.getLogger("nanochat.serve")
MAX_DOC_CHARS = 20000      # a document the page adds (longer: chunk it, `nanochat kb add`)
MAX_TITLE_CHARS = 500
MAX_DOCS_PER_REQUEST = 100
MAX_BODY_BYTES = 2_000_000


def create_app(model, tokenizer, kb, defaults=None, checkpoint=None):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    defaults = {"mode": "refrag", "k": 3, "retriever": "bm25", "max_hops": 3, "max_new_tokens": 48, "copy": True,
                **(defaults or {})}
    app = FastAPI(title="nanochat-rag", docs_url=None, redoc_url=None)
    model_lock, kb_lock = asyncio.Lock(), threading.Lock()
    page = (Path(__file__).with_name("chat_ui.html")).read_text()

    def error(status, msg):
        return JSONResponse({"error": msg}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        parts = ["/".join(str(x) for x in e.get("loc", ())[1:]) + ": " + e.get("msg", "") for e in exc.errors()]
        return error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request, exc):  # a bug or a failed write: the traceback goes to the log, not the client
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    async def body(request):
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise ChatError(f"request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}", 413)
        try:
            data = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ChatError(f"the body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ChatError("the body must be a JSON object")
        return data

    @app.exception_handler(ChatError)
    async def _bad(request, exc):
        return error(exc.status, str(exc))

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/api/info")
    def info():
        with kb_lock:
            n = len(kb) if kb is not None else 0
        return {"checkpoint": str(checkpoint) if checkpoint else None, "documents": n, "defaults": defaults,
                "max_question_chars": MAX_QUESTION_CHARS}

    @app.post("/api/chat")
    async def chat(request: Request):
        data = await body(request)
        unknown = sorted(set(data) - {"question", "mode", "k", "max_hops", "history"})
        if unknown:
            raise ChatError(f"unknown field(s) {unknown}; the fields are question, mode, k, max_hops, history")
        question = check_question(data.get("question"))
        mode = data.get("mode", defaults["mode"])
        if mode not in MODES:
            raise ChatError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        k, hops = data.get("k", defaults["k"]), data.get("max_hops", defaults["max_hops"])
        for name, v, hi in (("k", k, 16), ("max_hops", hops, 5)):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
                raise ChatError(f"{name}: must be an integer from 1 to {hi}, got {v!r}")
        history = data.get("history", [])
        if not (isinstance(history, list) and all(isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t)
                                                  for t in history)):
            raise ChatError("history: must be a list of [question, answer] pairs of strings")
        if any(len(x) > MAX_QUESTION_CHARS for t in history for x in t):
            raise ChatError(f"history: each question and answer is limited to {MAX_QUESTION_CHARS} characters", 413)
        if mode != "closed_book" and kb is None:
            raise ChatError(f"mode {mode!r} needs a KB; this server was started without one")

        async def events():
            # An asyncio lock: a request waiting for the model holds no worker thread, and each
            # step of the answer runs in the thread pool, so the event loop stays free.
            async with model_lock:
                gen = answer_stream(model, tokenizer, question, mode=mode, kb=kb, k=k, retriever=defaults["retriever"],
                                    max_hops=hops, max_new_tokens=defaults["max_new_tokens"], history=history[-4:],
                                    kb_lock=kb_lock, copy=defaults["copy"])
                try:
                    while (ev := await run_in_threadpool(next, gen, None)) is not None:
                        yield json.dumps(ev) + "\n"
                except Exception as e:  # the status line is sent: report it in the stream
                    log.exception("chat failed for %r", question)
                    yield json.dumps({"event": "error", "error": f"{type(e).__name__}: {e}"}) + "\n"
                finally:
                    gen.close()
        return StreamingResponse(events(), media_type="application/x-ndjson")

    @app.get("/api/documents/{doc_id:path}")
    def get_document(doc_id: str):
        with kb_lock:
            if kb is None or doc_id not in kb.by_id:
                return error(404, f"no document {doc_id!r} in the KB")
            d = kb.get(doc_id)
        return {"id": d["id"], "title": d.get("title", ""), "text": d["text"], "source": d.get("source", "")}

    @app.post("/api/documents")
    async def add_documents(request: Request):
        from nanochat_core.data.documents import DocumentError
        data = await body(request)
        docs = data.get("documents")
        if kb is None:
            raise ChatError("this server has no KB to add documents to")
        if not isinstance(docs, list) or not docs:
            raise ChatError('documents: give a non-empty list, e.g. {"documents": [{"title": "...", "text": "..."}]}')
        if len(docs) > MAX_DOCS_PER_REQUEST:
            raise ChatError(f"documents: {len(docs)} in one request; the limit is {MAX_DOCS_PER_REQUEST}", 413)
        rows = []
        for i, d in enumerate(docs):
            if not isinstance(d, dict) or not isinstance(d.get("text"), str) or not d["text"].strip():
                raise ChatError(f"documents[{i}]: needs a non-empty 'text' string")
            title, doc_id = d.get("title", ""), d.get("id")
            if not isinstance(title, str) or (doc_id is not None and not (isinstance(doc_id, str) and doc_id.strip())):
                raise ChatError(f"documents[{i}]: 'title' and 'id' must be strings (id may be left out)")
            for field, limit in (("text", MAX_DOC_CHARS), ("title", MAX_TITLE_CHARS)):
                if len(d.get(field, "")) > limit:
                    raise ChatError(f"documents[{i}]: {field} has {len(d[field])} characters; the limit is {limit}"
                                    + (" (split it, or add it with `nanochat kb add` and chunking)" if field == "text" else ""),
                                    413)
            doc_id = doc_id or "user-" + hashlib.sha256((title + "\n" + d["text"]).encode()).hexdigest()[:12]
            rows.append({"id": doc_id, "title": title, "text": d["text"], "source": "nanochat serve"})

        def add():  # re-indexing takes a while: in a worker thread, so streams go on meanwhile
            with kb_lock:
                kb.add(rows)  # atomic on disk; on failure memory is rolled back too (KnowledgeBase._reindex)
                return len(kb)
        try:
            n = await run_in_threadpool(add)
        except (DocumentError, ValueError) as e:
            return error(409 if "already in KB" in str(e) else 400, str(e))
        return {"added": [r["id"] for r in rows], "documents": n}

    @app.delete("/api/documents/{doc_id:path}")
    def remove_document(doc_id: str):  # a sync endpoint: FastAPI runs it in a worker thread
        with kb_lock:
            if kb is None or doc_id not in kb.by_id:
                return error(404, f"no document {doc_id!r} in the KB")
            try:
                kb.remove([doc_id])
            except ValueError as e:
                return error(400, str(e))
            n = len(kb)
        return {"removed": doc_id, "documents": n}

    return app


def run(model, tokenizer, kb, host="127.0.0.1", port=8000, defaults=None, checkpoint=None):
    import uvicorn
    uvicorn.run(create_app(model, tokenizer, kb, defaults, checkpoint), host=host, port=port, log_level="warning")
