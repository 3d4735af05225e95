"""REFRAG inference, question first: hop 1 is exactly single-shot RAG's block, later blocks
hold only documents not shown yet, the hop limit forces an answer, and a model that answers
at once produces single-shot RAG's answer token for token."""
import pytest
import torch
from fakes import BiasedGPT

from nanochat_core.data.questions import make_questions
from nanochat_core.data.world import build_world
from nanochat_core.inference import answer_questions
from nanochat_core.model import GPTConfig
from nanochat_core.rag import retrieve
from nanochat_core.retrieval import KnowledgeBase
from nanochat_core.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def setup():
    world = build_world(2, n_people=40, n_cities=6, n_countries=2, n_companies=6, n_universities=3)
    docs = world.kb_documents()
    kb = KnowledgeBase.build(docs, None, ["bm25"])
    tok = Tokenizer.train(iter([d["text"] for d in docs] * 3), vocab_size=600)
    qa = make_questions(world, 2, {}, {"single": 6, "2hop": 6})[0]
    return world, kb, tok, qa["val"] + qa["test"]


def _config(tok):
    return GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, n_kv_head=2,
                     block_pattern="TM", headdim=16, sequence_len=4096)


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
    query = next(" " + e.name for e in world.entities.values() if e.type == "city"
                 and len(set(tok.encode(" " + e.name))) == len(tok.encode(" " + e.name)))
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
