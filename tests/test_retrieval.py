"""Retrievers: BM25 parity with rank-bm25, TF-IDF against a direct computation, dense and
hybrid behaviour, save/load round trips, and the SciFact nDCG@10 targets."""
import math
import random

import numpy as np
import pytest

from nanochat_core.retrieval import (
    BM25Retriever,
    DenseRetriever,
    Hit,
    HybridRetriever,
    TfidfRetriever,
    load_retriever,
    make_retriever,
    rrf_fuse,
)
from nanochat_core.retrieval.base import doc_text, tokenize, topk_hits
from nanochat_core.retrieval.bm25 import RANK_BM25_OKAPI

FACTS = [
    ("cat", "Cats", "The domestic cat is a small carnivorous mammal often kept as a house pet."),
    ("dog", "Dogs", "Dogs were domesticated from wolves and are loyal companions that enjoy walks."),
    ("eiffel", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."),
    ("python", "Python", "Python is a high-level programming language known for its readable syntax."),
    ("mamba", "Mamba", "Mamba is a selective state space model for long sequences."),
    ("attention", "Transformer", "The transformer architecture relies on self-attention over tokens."),
    ("photosynthesis", "Photosynthesis", "Plants convert sunlight, water and carbon dioxide into sugar and oxygen."),
    ("everest", "Mount Everest", "Mount Everest in the Himalayas is the highest mountain above sea level."),
    ("vaccine", "Vaccines", "Vaccines train the immune system to recognise a pathogen without causing disease."),
    ("bitcoin", "Bitcoin", "Bitcoin is a decentralized digital currency recorded on a blockchain ledger."),
    ("jupiter", "Jupiter", "Jupiter is the largest planet in the solar system, a gas giant with many moons."),
    ("coffee", "Coffee", "Coffee is brewed from roasted beans and contains the stimulant caffeine."),
    ("violin", "Violin", "The violin is a bowed string instrument with four strings tuned in fifths."),
    ("tsunami", "Tsunami", "A tsunami is a series of ocean waves caused by an undersea earthquake."),
    ("insulin", "Insulin", "Insulin is a hormone made by the pancreas that lowers blood glucose."),
    ("chess", "Chess", "Chess is a board game for two players with kings, queens, rooks and pawns."),
    ("volcano", "Volcanoes", "A volcano erupts when molten rock called magma reaches the surface."),
    ("honeybee", "Honey bees", "Honey bees pollinate flowers and store nectar as honey in wax combs."),
    ("sahara", "Sahara", "The Sahara is the largest hot desert, spanning much of North Africa."),
    ("penicillin", "Penicillin", "Penicillin, discovered by Alexander Fleming, was the first widely used antibiotic."),
    ("glacier", "Glaciers", "Glaciers are slow rivers of ice that carve valleys as they move."),
    ("sourdough", "Sourdough", "Sourdough bread rises thanks to wild yeast and lactic acid bacteria."),
    ("moon", "Moon landing", "Apollo 11 landed the first humans on the Moon in July 1969."),
    ("dna", "DNA", "DNA is a double helix that stores the genetic instructions of living organisms."),
]
DOCS = [{"id": i, "title": t, "text": x, "source": "test", "metadata": {}} for i, t, x in FACTS]
# Each query is answered by one doc; the dense ones share no content word with it.
LEXICAL = [("eiffel tower paris", "eiffel"), ("state space model sequences", "mamba"), ("caffeine beans", "coffee")]
SEMANTIC = [("feline animal that lives with people", "cat"), ("tallest peak on earth", "everest"),
            ("medicine that kills bacteria", "penicillin"), ("cryptocurrency", "bitcoin")]


@pytest.fixture(scope="module")
def dense():
    # One model load (seconds) and one encoding for the whole module.
    return DenseRetriever().index(DOCS)


def ids(hits):
    return [h.doc_id for h in hits]


def test_tokenize_and_topk():
    assert tokenize("The Cat's 2 hats, in Paris!") == ["cat", "s", "2", "hats", "paris"]
    assert tokenize("The cat", stopwords=False) == ["the", "cat"]
    s = np.array([0.5, 2.0, 0.5, 1.0, 0.0])
    assert topk_hits(s, list("abcde"), 3) == [Hit("b", 2.0), Hit("d", 1.0), Hit("a", 0.5)]  # tie -> lower index
    assert ids(topk_hits(s, list("abcde"), 10, drop_nonpositive=True)) == ["b", "d", "a", "c"]


def random_corpus(seed=0, n_docs=300, vocab=2000):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    docs = [{"id": f"d{i}", "title": "", "text": " ".join(rng.choice(words) for _ in range(rng.randint(5, 80)))}
            for i in range(n_docs)]
    queries = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(60)]
    queries.append("w1 w1 w2")  # repeated query terms count twice in both
    return docs, queries


def test_bm25_parity_with_rank_bm25_okapi():
    from rank_bm25 import BM25Okapi
    docs, queries = random_corpus()
    corpus_tokens = [tokenize(doc_text(d)) for d in docs]
    # The one documented difference is the floor on negative idf, which needs a term in more
    # than half of the docs; this corpus has none, so the two must agree exactly.
    df = {}
    for toks in corpus_tokens:
        for t in set(toks):
            df[t] = df.get(t, 0) + 1
    assert max(df.values()) < len(docs) / 2
    ours = BM25Retriever(**RANK_BM25_OKAPI).index(docs)
    ref = BM25Okapi(corpus_tokens, k1=1.5, b=0.75)
    for q in queries:
        theirs = ref.get_scores(tokenize(q))
        hits = ours.search([q], k=len(docs))[0]
        expected = [docs[i]["id"] for i in sorted(range(len(docs)), key=lambda i: (-theirs[i], i)) if theirs[i] > 0]
        assert ids(hits) == expected, q
        for h in hits:
            t = theirs[int(h.doc_id[1:])]
            assert abs(h.score - t) <= 1e-6 * abs(t), (q, h)


def test_tfidf_matches_direct_cosine():
    docs = [{"id": "a", "title": "", "text": "apple apple banana"},
            {"id": "b", "title": "", "text": "banana cherry"},
            {"id": "c", "title": "", "text": "cherry cherry cherry date"}]
    r = TfidfRetriever().index(docs)
    n = 3
    idf = {"apple": math.log(4 / 2) + 1, "banana": math.log(4 / 3) + 1, "cherry": math.log(4 / 3) + 1,
           "date": math.log(4 / 2) + 1}

    def vec(counts):
        v = {t: (1 + math.log(c)) * idf[t] for t, c in counts.items() if t in idf}
        norm = math.sqrt(sum(x * x for x in v.values()))
        return {t: x / norm for t, x in v.items()}
    dv = [vec({"apple": 2, "banana": 1}), vec({"banana": 1, "cherry": 1}), vec({"cherry": 3, "date": 1})]
    q = vec({"banana": 1, "cherry": 2})
    want = sorted(((sum(q.get(t, 0) * x for t, x in d.items()), "abc"[i]) for i, d in enumerate(dv)), reverse=True)
    hits = r.search(["banana cherry cherry unknownword"], k=n)[0]
    assert ids(hits) == [w[1] for w in want]
    assert [h.score for h in hits] == pytest.approx([w[0] for w in want], rel=1e-6)


@pytest.mark.parametrize("name", ["tfidf", "bm25"])
def test_lexical_retrievers_find_and_round_trip(name, tmp_path):
    r = make_retriever(name).index(DOCS)
    res = r.search([q for q, _ in LEXICAL] + ["zzzz qqqq"], k=3)
    assert [hits[0].doc_id for hits in res[:-1]] == [want for _, want in LEXICAL]
    assert res[-1] == []  # no word in common: no hits rather than arbitrary ones
    r.save(tmp_path / name)
    again = load_retriever(name, tmp_path / name)
    assert again.search([q for q, _ in LEXICAL], k=5) == r.search([q for q, _ in LEXICAL], k=5)


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="unknown bm25 settings"):
        BM25Retriever(k=1)
    with pytest.raises(ValueError, match="unknown retriever 'splade'"):
        make_retriever("splade")


def test_dense_finds_paraphrases_and_round_trips(dense, tmp_path):
    res = dense.search([q for q, _ in SEMANTIC], k=3)
    assert [hits[0].doc_id for hits in res] == [want for _, want in SEMANTIC]
    # normalized vectors: inner product is cosine, in [-1, 1], best first
    for hits in res:
        assert all(-1.0001 <= h.score <= 1.0001 for h in hits)
        assert [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)
    dense.save(tmp_path / "dense")
    assert sorted(p.name for p in (tmp_path / "dense").iterdir()) == ["embeddings.npy", "ids.json", "index.faiss"]
    again = DenseRetriever.load(tmp_path / "dense")
    assert again.search([q for q, _ in SEMANTIC], k=5) == dense.search([q for q, _ in SEMANTIC], k=5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_dense_approximate_indexes_agree_on_small_corpus(dense, kind):
    r = DenseRetriever(index=kind)
    r._encoder = dense.encoder
    r.hashes, r.emb, r.model_info = dense.hashes, dense.emb, dense.model_info  # reuse the cached vectors
    r.index(DOCS)
    assert r.num_encoded_last == 0
    qs = [q for q, _ in SEMANTIC]
    assert [ids(h)[:1] for h in r.search(qs, k=3)] == [ids(h)[:1] for h in dense.search(qs, k=3)]


def test_rrf_fuse_by_hand():
    a = [Hit("x", 9.0), Hit("y", 5.0), Hit("z", 1.0)]
    b = [Hit("y", 0.9), Hit("w", 0.8)]
    fused = rrf_fuse([a, b], [1.0, 2.0], k_rrf=60, k=10)
    want = {"x": 1 / 61, "y": 1 / 62 + 2 / 61, "z": 1 / 63, "w": 2 / 62}
    assert ids(fused) == ["y", "w", "x", "z"]
    assert [h.score for h in fused] == pytest.approx([want[d] for d in ids(fused)])
    # equal scores: the first retriever's doc first
    assert ids(rrf_fuse([[Hit("p", 1)], [Hit("q", 1)]], [1, 1], k=2)) == ["p", "q"]


def test_hybrid_gets_both_lexical_and_semantic_queries(dense, tmp_path):
    h = HybridRetriever({"bm25": BM25Retriever().index(DOCS), "dense": dense}, weights={"dense": 1.0})
    qs = [q for q, _ in LEXICAL + SEMANTIC]
    # Each query is answered by only one of the two retrievers, yet the fusion ranks every
    # answer in its top 2 (a lexical near-miss may take first place: "bacteria" is in sourdough).
    for hits, (q, want) in zip(h.search(qs, k=3), LEXICAL + SEMANTIC):
        assert want in ids(hits)[:2], q
    h.save(tmp_path / "hybrid")
    assert load_retriever("hybrid", tmp_path / "hybrid").search(qs, k=5) == h.search(qs, k=5)
    with pytest.raises(ValueError, match="not among its retrievers"):
        HybridRetriever({"bm25": h.retrievers["bm25"]}, weights={"dense": 2.0})


# ---------------------------------------------------------------------------------------------
# SciFact (BEIR): the published-number targets. bm25 and tfidf take seconds; dense encodes 5,183
# docs (minutes on a CPU) so it and hybrid are marked slow.

@pytest.fixture
def scifact(reference_data):
    from nanochat_core.retrieval.beir import load_beir
    d = reference_data / "beir" / "scifact"
    if not d.exists():
        pytest.skip(f"SciFact not found at {d} (set NANOCHAT_REFERENCE_DATA)")
    return load_beir(d)


def scifact_eval(retriever, scifact):
    from nanochat_core.retrieval.beir import evaluate_retriever
    res = evaluate_retriever(retriever, *scifact)
    print(f"\nSciFact {getattr(retriever, 'name', retriever)}: {res}")
    return res


def test_scifact_bm25_reaches_published(scifact):
    res = scifact_eval(BM25Retriever(), scifact)
    assert res["num_queries"] == 300 and res["num_docs"] == 5183
    assert res["ndcg@10"] >= 0.655  # published 0.665


def test_scifact_tfidf_is_a_sane_baseline(scifact):
    # No published target; TF-IDF should land a little below BM25 (0.634 measured).
    assert 0.60 <= scifact_eval(TfidfRetriever(), scifact)["ndcg@10"] < 0.665


@pytest.mark.slow
def test_scifact_dense_and_hybrid_reach_published(scifact):
    from nanochat_core.metrics import evaluate_run
    docs, queries, qrels = scifact
    bm25 = BM25Retriever().index(docs)
    dense = DenseRetriever().index(docs)  # encoded once, shared by dense and hybrid
    qids = list(queries)

    def ndcg(r):
        res = r.search([queries[q] for q in qids], k=100)
        out = evaluate_run({q: ids(h) for q, h in zip(qids, res)}, qrels)
        print(f"\nSciFact {getattr(r, 'name', r)}: {out}")
        return out["ndcg@10"]
    b, d, h = ndcg(bm25), ndcg(dense), ndcg(HybridRetriever({"bm25": bm25, "dense": dense}))
    assert d >= 0.640  # published 0.645
    assert h >= max(b, d)


def test_bm25_keeps_jax_off_the_gpu_unless_the_user_chose(monkeypatch):
    """Importing bm25s starts JAX when it is installed, and JAX then takes 75% of a CUDA GPU per
    process; the BM25 retriever pins JAX to the CPU first, but never overrides a user's choice."""
    from nanochat_core.retrieval import bm25
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    bm25._bm25s()
    import os
    assert os.environ["JAX_PLATFORMS"] == "cpu"
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    bm25._bm25s()
    assert os.environ["JAX_PLATFORMS"] == "cuda"
