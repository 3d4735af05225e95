"""Answering questions with a trained model: the evaluation side, which no training stage
depends on (editing it retrains nothing).

Three ways to answer, all with the same model and tokenizer:
  closed_book  the question alone
  rag          the question, then one documents block: the KB's top-k for the question
  refrag       the model writes <|search_start|>query<|search_end|>; the engine runs the
               retriever and forces the documents block in; repeat up to max_hops, then answer
Answers cite the documents they used as [n] (their number in the block).
"""
import re

from nanochat_core.engine import Engine
from nanochat_core.rag import closed_book_conversation, reading_conversation, retrieve

MODES = ("closed_book", "rag", "refrag")
_CITE = re.compile(r"\s*\[(\d+)\]")


def parse_answer(text):
    """'Palmora [2]' -> ('Palmora', [2])."""
    cites = [int(c) for c in _CITE.findall(text)]
    return _CITE.sub("", text).strip(), cites


def make_search_tool(tokenizer, kb, k, retriever, log):
    """The engine's tool: query text -> documents block tokens. Every (query, docs) is
    appended to `log` so evaluation can measure what was retrieved."""
    def tool(query):
        if query is None:  # past max_hops: an empty block, so the model must answer now
            return tokenizer.encode_documents([])
        docs = retrieve(kb, [query.strip()], k, retriever)[0]
        log.append((query.strip(), docs))
        return tokenizer.encode_documents(docs)
    return tool


def answer_questions(model, tokenizer, questions, mode, kb=None, k=3, retriever="bm25", max_hops=3,
                     max_new_tokens=48, batch_size=16):
    """Greedy answers for `questions` in `mode`. Returns one dict per question: prediction,
    citations, the documents the model saw (one list per block), and its search queries."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    end = tokenizer.encode_special("<|assistant_end|>")
    out = []
    for i in range(0, len(questions), batch_size):
        batch = questions[i:i + batch_size]
        shown = [[] for _ in batch]
        queries = [[] for _ in batch]
        if mode == "closed_book":
            prompts = [tokenizer.render_for_completion(closed_book_conversation(q, False)) for q in batch]
            toks, masks = Engine(model).generate_batch(prompts, max_new_tokens, stop_tokens=[end])
        elif mode == "rag":
            docs = retrieve(kb, [q["question"] for q in batch], k, retriever)
            shown = [[d] for d in docs]
            prompts = [tokenizer.render_for_completion(reading_conversation(q, d, False)) for q, d in zip(batch, docs)]
            toks, masks = Engine(model).generate_batch(prompts, max_new_tokens, stop_tokens=[end])
        else:
            log = []
            engine = Engine(model, tokenizer, tool=make_search_tool(tokenizer, kb, k, retriever, log),
                            max_tool_calls=max_hops)
            prompts = [tokenizer.render_for_completion(closed_book_conversation(q, False)) for q in batch]
            # the model's own tokens: up to max_hops search calls, then the answer
            toks, masks = engine.generate_batch(prompts, max_new_tokens * (max_hops + 1), stop_tokens=[end])
            by_query = dict(log)
            queries = engine.queries
            shown = [[by_query[q] for q in qs if q in by_query] for qs in queries]
        for b, q in enumerate(batch):
            text = final_text(tokenizer, toks[b], masks[b])
            answer, cites = parse_answer(text)
            out.append({"id": q["id"], "type": q["type"], "prediction": answer, "raw": text, "citations": cites,
                        "documents": shown[b], "queries": queries[b]})
    return out


def final_text(tokenizer, toks, masks):
    """The answer: the model's own tokens after its last documents block / search call."""
    specials = tokenizer.special_ids
    last = 0
    for i, t in enumerate(toks):
        if t in specials:
            last = i + 1
    return tokenizer.decode([t for t, m in zip(toks[last:], masks[last:]) if m == 1 and t not in specials]).strip()
