"""REFRAG inference, question first: hop 1 is exactly single-shot RAG's block, later blocks
hold only documents not shown yet, the hop limit forces an answer, and a model that answers
at once produces single-shot RAG's answer token for token."""
import pytest
import torch
from fakes import BiasedGPT, distinct_city, tiny_config, tiny_world

from nanochat_core.inference import answer_questions
from nanochat_core.rag import retrieve


@pytest.fixture(scope="module")
def setup():
    return tiny_world(2, 6, 6)


_config = tiny_config


def test_answering_at_once_is_single_shot_rag_token_for_token(setup):
    _, kb, tok, qs = setup
    torch.manual_seed(0)
    model = BiasedGPT(_config(tok), always={tok.encode_special("<|search_start|>"): -1e4}).eval()
    rag = answer_questions(model, tok, qs, "rag", kb, k=3)
    refrag = answer_questions(model, tok, qs, "refrag", kb, k=3, max_hops=3)
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
