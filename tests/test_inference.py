"""REFRAG inference, question first: hop 1 is exactly single-shot RAG's block, later blocks
hold only documents not shown yet, the hop limit forces an answer, and a model that answers
at once produces single-shot RAG's answer token for token."""
import re

import pytest
import torch
from fakes import BiasedGPT, distinct_city, tiny_config, tiny_world

from nanochat_core.data.world import ABSTAIN
from nanochat_core.inference import answer_questions
from nanochat_core.rag import retrieve


@pytest.fixture(scope="module")
def setup():
    return tiny_world(2, 6, 6)


_config = tiny_config


@pytest.mark.parametrize("copy", [False, True])
def test_answering_at_once_is_single_shot_rag_token_for_token(setup, copy):
    _, kb, tok, qs = setup
    torch.manual_seed(0)
    model = BiasedGPT(_config(tok), always={tok.encode_special("<|search_start|>"): -1e4}).eval()
    rag = answer_questions(model, tok, qs, "rag", kb, k=3, copy=copy)
    refrag = answer_questions(model, tok, qs, "refrag", kb, k=3, max_hops=3, copy=copy)
    for a, b, q in zip(rag, refrag, qs):
        assert a["raw"] == b["raw"] and a["prediction"] == b["prediction"] and a["citations"] == b["citations"]
        assert b["documents"] == a["documents"]  # one block: the question's own top-k
        assert b["queries"] == [q["question"]]


def test_follow_ups_show_only_new_documents_and_the_limit_forces_an_answer(setup):
    world, kb, tok, qs = setup
    sp = tok.encode_special
    # a query of distinct tokens that names a city (so its search finds documents)
    query = " " + distinct_city(world, tok)
    q_ids = tok.encode(query)
    chain = [sp("<|search_start|>")] + q_ids + [sp("<|search_end|>")]
    after = {a: b for a, b in zip(chain, chain[1:])}
    after[sp("<|assistant_start|>")] = chain[0]
    after[sp("<|documents_end|>")] = chain[0]  # after every block it wants to search again
    torch.manual_seed(0)
    model = BiasedGPT(_config(tok), after=after).eval()
    for max_hops in (1, 2, 3):
        out = answer_questions(model, tok, qs, "refrag", kb, k=3, max_hops=max_hops, max_new_tokens=12)
        for p, q in zip(out, qs):
            assert p["documents"][0] == retrieve(kb, [q["question"]], 3, "bm25")[0]  # hop 1: the question
            assert len(p["documents"]) == max_hops  # it searched until the limit and no further
            assert p["queries"] == [q["question"]] + [query.strip()] * (max_hops - 1)
            ids = [d["id"] for block in p["documents"] for d in block]
            assert len(ids) == len(set(ids))  # no document shown twice
            for block in p["documents"][1:]:
                seen = {d["id"] for b in p["documents"][:p["documents"].index(block)] for d in b}
                want = [d for d in retrieve(kb, [query.strip()], 3 + len(seen), "bm25")[0] if d["id"] not in seen][:3]
                assert block == want  # the follow-up's top-k among the unseen
            assert "<|search" not in p["raw"] and p["raw"]  # past the limit it answered


def _copied(text, shown):
    """Whether text occurs in shown starting and ending at word boundaries."""
    return re.search(r"(?<![A-Za-z0-9])" + re.escape(text) + r"(?![A-Za-z0-9])", shown) is not None


def test_under_the_copy_guard_every_query_and_answer_is_a_copy_of_what_was_shown(setup):
    """Random weights (long, arbitrary text) that search often: with copy=True each follow-up
    query is a whole-word copy of the question or a block shown before it, and each answer
    (before its citation) a whole-word copy of the question or a block, or the abstention;
    without the guard the same model writes text found nowhere."""
    _, kb, tok, qs = setup
    sp = tok.encode_special
    torch.manual_seed(1)
    model = BiasedGPT(_config(tok), always={sp("<|search_end|>"): 3.0},
                      after={sp("<|assistant_start|>"): sp("<|search_start|>")}).eval()

    def text(blocks):
        return " ".join(d["title"] + " " + d["text"] for b in blocks for d in b)

    free = answer_questions(model, tok, qs, "refrag", kb, k=3, max_hops=3, max_new_tokens=16)
    assert any(not _copied(p["raw"].split("[")[0].strip(), p["queries"][0] + " " + text(p["documents"]))
               for p in free)
    out = answer_questions(model, tok, qs, "refrag", kb, k=3, max_hops=3, max_new_tokens=16, copy=True)
    assert sum(len(p["queries"]) > 1 for p in out) >= 3  # it searched
    for p in out:
        for i, query in enumerate(p["queries"][1:], start=1):  # query i was written after block i
            assert query and _copied(query, p["queries"][0] + " " + text(p["documents"][:i])), query
        answer = p["raw"].split("[")[0].strip()
        assert answer and (ABSTAIN.startswith(answer) or _copied(answer, p["queries"][0] + " " + text(p["documents"])))
