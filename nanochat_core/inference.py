"""Answering questions with a trained model: used by evaluate and by refrag_finetune's RL
rollouts (so editing it reruns both).

Three ways to answer, all with the same model and tokenizer:
  closed_book  the question alone
  rag          the question, then one documents block: the KB's top-k for the question
  refrag       question first: the same prompt as rag (hop 1 is the question's top-k); then
               the model either answers or writes <|search_start|>follow-up<|search_end|>,
               and the engine forces in a block of the follow-up's top-k documents not shown
               yet. At max_hops blocks the engine masks the search markers out, so the model
               must answer. A model that answers after hop 1 is single-shot RAG, token for token.
With copy=True the engine keeps every rag/refrag query and answer a copy of what was shown
(engine.CopyGuard); evaluate and RL turn it on (params: evaluate.copy_guard, refrag_finetune.rl_copy_guard).
Answers cite the documents they used as [n] (their number in the block). A rag or refrag
answer must occur in a document it was shown (after a follow-up search, one that names the last
query); one that does not is replaced by the abstention (ground), and the row says so.
"""
import re

from nanochat_core.data.world import ABSTAIN
from nanochat_core.engine import Engine
from nanochat_core.metrics import is_abstain, supported
from nanochat_core.rag import closed_book_conversation, new_hits, reading_conversation, retrieve, swap_docs

MODES = ("closed_book", "rag", "refrag")
_CITE = re.compile(r"\s*\[(\d+)\]")


def parse_answer(text):
    """'Palmora [2]' -> ('Palmora', [2])."""
    cites = [int(c) for c in _CITE.findall(text)]
    return _CITE.sub("", text).strip(), cites


def ground(answer, cites, blocks, queries=()):
    """(answer, cites, replaced): an answer read from documents must occur, as whole words, in
    one of the shown `blocks` (metrics.supported); after a follow-up search (`queries` beyond
    the first, which is the question itself) it must occur in a shown document that names the
    last query. An answer that fails becomes the abstention, citing nothing. An empty answer or
    an abstention is left as it is.

    Why the first rule: such an answer is a guess the documents do not back, the reader's worst
    case a name copied half-way ("Bos" for "Bosen Buka"). On world 1337's test questions
    (`dvc repro` at ec2996d against af7298d) it lifted abstention on unanswerable questions
    0.907 -> 0.973 (the refrag checkpoint, REFRAG mode) and 0.880 -> 1.000 (its RAG mode), cut
    REFRAG's 2-hop hallucination 0.367 -> 0.153, and took 2 right answers in all: the mid
    checkpoint's, on 2-hop questions in RAG mode, countries it recalled rather than read.
    Why the second: the answer to a chain is in the document of its last link, which is what
    the model searched for last. Without it the model, having found a founder whose birth year
    is missing, answered a year read off another document. Measured on the default `refrag`
    checkpoints under the copy guard (greedy, post hoc on the same answers): the train split's
    multi-hop unanswerable questions abstained 0.583 -> 0.833 (n=24, world 1337) and 0.692 ->
    0.885 (n=26, world 2027); every val EM the same but world 2027's unanswerable 0.92 -> 0.96;
    120 train 2-hop/3-hop questions per world, the same."""
    if not answer or is_abstain(answer, ABSTAIN):
        return answer, cites, False
    docs = [d for block in blocks for d in block if supported(answer, [d])]
    if docs and len(queries) > 1:
        last = queries[-1].strip().lower()
        docs = [d for d in docs if last in f"{d.get('title') or ''} {d['text']}".lower()]
    if docs:
        return answer, cites, False
    return ABSTAIN, [], True


def make_search_tool(tokenizer, kb, k, retriever, shown, swaps=None):
    """The engine's tool for REFRAG: (query, row) -> the tokens of a documents block holding
    the query's top-k among the documents row has not been shown. shown[row] is that row's
    list of blocks so far (hop 1 included); each new block is appended to it. An empty query
    gets an empty block. swaps[row]: (old, new) to rewrite in every document shown, or None."""
    def tool(query, row):
        seen = {d["id"] for block in shown[row] for d in block}
        docs = new_hits(kb, query, seen, k, retriever) if query.strip() else []
        if swaps and swaps[row]:
            docs = swap_docs(docs, *swaps[row])
        shown[row].append(docs)
        return tokenizer.encode_documents(docs)
    return tool


def rag_prompts(tokenizer, questions, kb, k, retriever, swaps=None):
    """Single-shot RAG's prompts (the question, then its top-k block), which are also REFRAG's
    hop 1. Returns (shown, prompts): shown[b] = [that block]. swaps: as make_search_tool's."""
    docs = retrieve(kb, [q["question"] for q in questions], k, retriever)
    if swaps:
        docs = [swap_docs(d, *s) if s else d for d, s in zip(docs, swaps)]
    return [[d] for d in docs], [tokenizer.render_for_completion(reading_conversation(q, d, False))
                                 for q, d in zip(questions, docs)]


def refrag_rollouts(model, tokenizer, questions, kb, k=3, retriever="bm25", max_hops=3, max_new_tokens=48,
                    temperature=0.0, seed=0, copy=False, swaps=None):
    """REFRAG on one batch of questions, question first. Returns one dict per question:
    prompt (token ids), tokens and masks (what followed the prompt, mask 1 = sampled by the
    model, 0 = a forced documents block; the closing <|assistant_end|> included when the
    model wrote it), finished (it did), limit_from (the index in tokens from which the search
    markers were masked out of sampling, at the hop limit; len(tokens) if never), prediction,
    raw, citations, documents (one list per block, hop 1 first), queries (hop 1's is the
    question) and allowed (copy=True: the engine's copy guard, {index in tokens: the ids it
    allowed there}). temperature 0 is greedy; RL samples at 1.0 with `seed`. swaps: one (old, new)
    or None per question, rewritten in every document that question's blocks show (RL's live
    counterfactual, rag.swap_question)."""
    end = tokenizer.encode_special("<|assistant_end|>")
    shown, prompts = rag_prompts(tokenizer, questions, kb, k, retriever, swaps)
    engine = Engine(model, tokenizer, tool=make_search_tool(tokenizer, kb, k, retriever, shown, swaps),
                    max_tool_calls=max_hops - 1, copy=copy)
    # max_new_tokens for each follow-up query and for the answer
    toks, masks = engine.generate_batch(prompts, max_new_tokens, stop_tokens=[end], temperature=temperature,
                                        seed=seed)
    out = []
    for b, q in enumerate(questions):
        text = final_text(tokenizer, toks[b], masks[b])
        answer, cites = parse_answer(text)
        finished = engine.finished[b]
        tokens = toks[b] + ([end] if finished else [])
        limit = engine.limit_from[b]
        out.append({"prompt": prompts[b], "tokens": tokens, "masks": masks[b] + ([1] if finished else []),
                    "finished": finished, "limit_from": len(tokens) if limit is None else limit, "prediction": answer,
                    "allowed": engine.allowed_at[b],
                    "raw": text, "citations": cites, "documents": shown[b], "queries": [q["question"]] + engine.queries[b]})
    return out


def answer_questions(model, tokenizer, questions, mode, kb=None, k=3, retriever="bm25", max_hops=3,
                     max_new_tokens=48, batch_size=16, copy=False):
    """Greedy answers for `questions` in `mode`. Returns one dict per question: prediction and
    citations (grounded: see ground), raw (the model's own text), ungrounded (ground replaced
    the answer; never in closed_book, which has no documents), the documents the model saw
    (one list per block), and its search queries. copy: the engine's copy guard, in rag and
    refrag alike (so answering after hop 1 stays single-shot RAG); closed-book is shown nothing."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    end = tokenizer.encode_special("<|assistant_end|>")
    out = []
    for i in range(0, len(questions), batch_size):
        batch = questions[i:i + batch_size]
        if mode == "refrag":
            for q, r in zip(batch, refrag_rollouts(model, tokenizer, batch, kb, k, retriever, max_hops, max_new_tokens,
                                                   copy=copy)):
                answer, cites, replaced = ground(r["prediction"], r["citations"], r["documents"], r["queries"])
                out.append({"id": q["id"], "type": q["type"], "prediction": answer, "raw": r["raw"], "citations": cites,
                            "ungrounded": replaced, "documents": r["documents"], "queries": r["queries"]})
            continue
        if mode == "closed_book":
            shown = [[] for _ in batch]
            prompts = [tokenizer.render_for_completion(closed_book_conversation(q, False)) for q in batch]
        else:
            shown, prompts = rag_prompts(tokenizer, batch, kb, k, retriever)
        engine = Engine(model, tokenizer, copy=copy and mode == "rag")
        toks, masks = engine.generate_batch(prompts, max_new_tokens, stop_tokens=[end])
        for b, q in enumerate(batch):
            text = final_text(tokenizer, toks[b], masks[b])
            answer, cites = parse_answer(text)
            replaced = False
            if mode == "rag":
                answer, cites, replaced = ground(answer, cites, shown[b])
            out.append({"id": q["id"], "type": q["type"], "prediction": answer, "raw": text, "citations": cites,
                        "ungrounded": replaced, "documents": shown[b], "queries": []})
    return out


def final_text(tokenizer, toks, masks):
    """The answer: the model's own tokens after its last documents block / search call."""
    specials = tokenizer.special_ids
    last = 0
    for i, t in enumerate(toks):
        if t in specials:
            last = i + 1
    return tokenizer.decode([t for t, m in zip(toks[last:], masks[last:]) if m == 1 and t not in specials]).strip()
