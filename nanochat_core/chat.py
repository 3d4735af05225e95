"""Chatting with a trained checkpoint: one answer as a stream of events, for `nanochat chat`
and `nanochat serve`. It uses inference.py's prompts and search tool, so an answer here is
the answer `evaluate` scores, token for token (tests/test_chat.py checks it); this file is a
dep of no stage, so editing it retrains nothing.

Events (dicts, in order):
  {"event": "search",  "hop": n, "query": q}            hop 1's query is the question itself
  {"event": "sources", "hop": n, "sources": [{n, id, title, score, text}]}
  {"event": "token",   "text": t}                         the answer as it is written
  {"event": "done",    "answer", "raw", "ungrounded", "citations": [{n, id, title, hop}], "queries",
                       "sources" (one list per hop), "hops", "timings"}
                       answer: as evaluate scores it (inference.ground): when no source backs the
                       streamed text, the abstention, and ungrounded is true
"""
import contextlib
import time
from pathlib import Path

from nanochat_core.engine import Engine
from nanochat_core.inference import MODES, final_text, ground, make_search_tool, parse_answer
from nanochat_core.rag import closed_book_conversation, reading_conversation, retrieve

MAX_QUESTION_CHARS = 2000  # longer text is not a question; the model's context is ~1k tokens
# Most-trained first: the default checkpoint is the first of these that exists.
CHAT_STAGES = ("refrag_finetune", "rag_finetune", "midtrain")


class ChatError(ValueError):
    """A user-facing problem (missing checkpoint or KB, mismatch, bad question): the message
    says which command fixes it. `status` is the HTTP status `nanochat serve` answers with."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def check_question(question):
    if not isinstance(question, str) or not question.strip():
        raise ChatError("the question is empty; ask something, e.g. 'Where was Tupe Pugile born?'")
    if len(question) > MAX_QUESTION_CHARS:
        raise ChatError(f"the question has {len(question)} characters; the limit is {MAX_QUESTION_CHARS}", 413)
    return question.strip()


def _scored(kb, query, docs, depth, retriever):
    """The shown documents with their retrieval scores for `query` (display only: which
    documents are shown is decided by inference.py's code, exactly as in evaluate, which
    searched `depth` deep: k, plus the documents already shown for a follow-up)."""
    if not docs:
        return []
    score = {h.doc_id: float(h.score) for h in kb.search([query], k=depth, retriever=retriever)[0]}
    return [{"n": i, "id": d["id"], "title": d.get("title", ""), "score": score.get(d["id"]), "text": d["text"]}
            for i, d in enumerate(docs, 1)]


def prompt_for(tokenizer, question, mode, kb, k, retriever, history=()):
    """(prompt ids, hop-1 documents). history: earlier (question, answer) turns, rendered as
    plain user/assistant messages before this question (no documents: they would fill the
    context). With no history this is inference.py's prompt exactly."""
    qa = {"question": question}
    past = [m for q, a in history for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    if mode == "closed_book":
        return tokenizer.render_for_completion(past + closed_book_conversation(qa, False)), []
    docs = retrieve(kb, [question], k, retriever)[0]
    return tokenizer.render_for_completion(past + reading_conversation(qa, docs, False)), docs


def answer_stream(model, tokenizer, question, mode="refrag", kb=None, k=3, retriever="bm25", max_hops=3,
                  max_new_tokens=48, history=(), kb_lock=None, copy=True):
    """Yield the events above for one question (greedy decoding). kb_lock, when given, is held
    around every KB read, so a server can add documents while answers are generated. copy: the
    engine's copy guard in rag and refrag (evaluate.copy_guard's default), so chat answers as evaluate does."""
    question = check_question(question)
    if mode not in MODES:
        raise ChatError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if not (isinstance(k, int) and 1 <= k <= 16 and isinstance(max_hops, int) and 1 <= max_hops <= 5):
        raise ChatError(f"k must be 1-16 and max_hops 1-5, got k={k!r}, max_hops={max_hops!r}")
    if mode != "closed_book" and kb is None:
        raise ChatError(f"mode {mode!r} needs a KB; build it with `dvc repro build_kb`")
    if kb is not None and retriever != "hybrid" and retriever not in kb.retrievers:
        raise ChatError(f"the KB has no {retriever!r} index (it has {', '.join(sorted(kb.retrievers))}); pass one of "
                        "those, or rebuild the KB with it (kb.retrievers in params.yaml, then `dvc repro build_kb`)")
    lock = kb_lock or contextlib.nullcontext()
    t0 = time.perf_counter()
    with lock:
        prompt, docs = prompt_for(tokenizer, question, mode, kb, k, retriever, history)
        sources = [_scored(kb, question, docs, k, retriever)] if mode != "closed_book" else []
    retrieval_s = time.perf_counter() - t0
    if sources:
        yield {"event": "search", "hop": 1, "query": question}
        yield {"event": "sources", "hop": 1, "sources": sources[0]}
    shown = [[docs]]
    tool = None
    if mode == "refrag":
        inner = make_search_tool(tokenizer, kb, k, retriever, shown)

        def tool(query, row):  # the KB is read under the lock, as in hop 1
            nonlocal retrieval_s
            t = time.perf_counter()
            with lock:
                depth = k + sum(len(b) for b in shown[0])
                out = inner(query, row)
                sources.append(_scored(kb, query, shown[0][-1], depth, retriever))
            retrieval_s += time.perf_counter() - t
            return out
    end = tokenizer.encode_special("<|assistant_end|>")
    engine = Engine(model, tokenizer, tool=tool, max_tool_calls=max_hops - 1 if tool else None,
                    copy=copy and mode != "closed_book")
    specials = tokenizer.special_ids
    search_start, search_end = tokenizer.encode_special("<|search_start|>"), tokenizer.encode_special("<|search_end|>")
    toks, masks, answer_toks, sent = [], [], [], ""
    in_search, first_token_s, n_own = False, None, 0
    t1 = time.perf_counter()
    for step_toks, step_masks in engine.generate([prompt], max_new_tokens, stop_tokens=[end]):
        tok, m = step_toks[0], step_masks[0]
        if m == 1 and tok == end:
            break
        toks.append(tok)
        masks.append(m)
        if m == 0:  # a forced documents block: the answer starts over after it
            answer_toks, sent = [], ""
            continue
        n_own += 1
        if first_token_s is None:
            first_token_s = time.perf_counter() - t0
        if tok == search_start:
            in_search = True
        elif tool is not None and tok == search_end:
            # The engine searched (even for a search_end with no start, whose query is the text
            # since the last block). Text streamed before it was not the answer: a search event
            # tells clients to drop it.
            in_search = False
            yield {"event": "search", "hop": len(sources), "query": engine.queries[0][-1]}
            yield {"event": "sources", "hop": len(sources), "sources": sources[-1]}
        elif not in_search and tok not in specials:
            answer_toks.append(tok)
            text = tokenizer.decode(answer_toks).lstrip()
            if not text.endswith("\ufffd") and len(text) > len(sent):  # hold back a split UTF-8 char
                yield {"event": "token", "text": text[len(sent):]}
                sent = text
    generate_s = time.perf_counter() - t1
    raw = final_text(tokenizer, toks, masks)
    answer, cites = parse_answer(raw)
    replaced = False
    if mode != "closed_book":  # as evaluate scores it: an answer the sources do not hold becomes the abstention
        answer, cites, replaced = ground(answer, cites, shown[0], [question] + engine.queries[0])
    final = sources[-1] if sources else []
    citations = [{"n": c, "id": final[c - 1]["id"], "title": final[c - 1]["title"], "hop": len(sources)}
                 if 0 < c <= len(final) else {"n": c, "id": None, "title": None, "hop": None} for c in cites]
    yield {"event": "done", "question": question, "mode": mode, "answer": answer, "raw": raw, "ungrounded": replaced,
           "citations": citations, "queries": ([question] if sources else []) + engine.queries[0],
           "sources": sources, "hops": len(sources),
           "timings": {"retrieval_s": round(retrieval_s, 4), "generate_s": round(generate_s, 4),
                       "first_token_s": round(first_token_s, 4) if first_token_s is not None else None,
                       "tokens": n_own, "tokens_per_s": round(n_own / generate_s, 1) if generate_s > 0 else None}}


def answer(model, tokenizer, question, **kw):
    """The final event of answer_stream (the whole answer at once)."""
    for ev in answer_stream(model, tokenizer, question, **kw):
        pass
    return ev


# ------------------------------------------------------------------------------ loading

def default_paths(stages=None):
    """(checkpoint, tokenizer.json, KB dir) from dvc.yaml: the most-trained checkpoint that
    exists (refrag, then rag, then mid), else refrag's path (so the error names it)."""
    from nanochat_core import dvcfile
    from nanochat_core.checkpoint import latest_step
    stages = stages or dvcfile.load()
    ckpts = [Path(dvcfile.stage_paths(s, stages)["out"]) for s in CHAT_STAGES]
    ckpt = next((c for c in ckpts if c.is_dir() and latest_step(c) is not None), ckpts[0])
    tok = Path(dvcfile.stage_paths("pretrain", stages)["tokenizer"]) / "tokenizer.json"
    return ckpt, tok, Path(dvcfile.stage_paths("build_kb", stages)["kb"])


def load(checkpoint, tokenizer_path, kb_dir, mode, device="cpu"):
    """(model, tokenizer, kb or None, meta), with errors that name the fixing command."""
    from nanochat_core.checkpoint import CheckpointError, latest_step, load_model
    from nanochat_core.retrieval import KnowledgeBase
    from nanochat_core.retrieval.kb import KBError
    from nanochat_core.tokenizer import Tokenizer, TokenizerError
    checkpoint, tokenizer_path = Path(checkpoint), Path(tokenizer_path)
    if not tokenizer_path.is_file():
        raise ChatError(f"no tokenizer at {tokenizer_path}; train it with `dvc repro pretrain` "
                        "(or pass --tokenizer)")
    if not checkpoint.is_dir() or latest_step(checkpoint) is None:
        raise ChatError(f"no checkpoint in {checkpoint}; train one with `dvc repro` "
                        "(or pass --checkpoint a checkpoint directory)")
    try:
        tok = Tokenizer.load(tokenizer_path)
        model, meta = load_model(checkpoint, tok, device)
    except (CheckpointError, TokenizerError) as e:
        raise ChatError(f"{e}") from None
    model.eval()
    kb = None
    if mode != "closed_book":
        if not (Path(kb_dir) / "manifest.json").is_file():
            raise ChatError(f"no KB at {kb_dir}; build it with `dvc repro build_kb` (or pass --kb)")
        try:
            kb = KnowledgeBase.load(kb_dir)
        except KBError as e:
            raise ChatError(f"{e}") from None
    return model, tok, kb, meta
