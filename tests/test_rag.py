"""RAG conversation building: cited targets, abstention when gold is missing, answer parsing,
and the counterfactual swap drill."""
import random
import re

import pytest

from nanochat_core import rag, stages
from nanochat_core.data.world import ABSTAIN, fresh_people_world
from nanochat_core.evaluation import score
from nanochat_core.inference import parse_answer
from nanochat_core.params import DEFAULTS

QA = {"id": "q", "type": "single", "question": "Where was Ada Lovi born?", "answers": ["Kiko"],
      "gold_doc_ids": [["p1"]], "relation": "person.born_in"}
DOCS = [{"id": "c1", "title": "Kikoland", "text": "Kikoland is a country."},
        {"id": "p1", "title": "Ada Lovi", "text": "Ada Lovi was born in Kiko. Kiko is nice."}]


def test_reading_conversation_cites_gold_or_abstains():
    conv = rag.reading_conversation(QA, DOCS)
    assert conv[-1] == {"role": "assistant", "content": "Kiko [2]"}
    conv = rag.reading_conversation(QA, DOCS[:1])
    assert conv[-1]["content"] == ABSTAIN


def test_parse_answer():
    assert parse_answer("Kiko [2]") == ("Kiko", [2])
    assert parse_answer("Kiko [1] [3]") == ("Kiko", [1, 3])
    assert parse_answer(ABSTAIN) == (ABSTAIN, [])


def test_swap_answer_replaces_whole_words_only():
    pool = {"person.born_in": ["Kiko", "Miles"]}
    qa, docs = rag.swap_answer(QA, DOCS, pool, random.Random(0))
    assert qa["answers"] == ["Miles"]
    assert docs[1]["text"] == "Ada Lovi was born in Miles. Miles is nice."
    assert docs[0]["text"] == "Kikoland is a country."  # "Kiko" inside another word is left alone
    assert QA["answers"] == ["Kiko"]  # the input is not modified


def test_score_supported_and_hallucinated():
    pred = {"prediction": "Kiko", "citations": [2], "documents": [DOCS]}
    row = score([QA], [pred])[0]
    assert row["em"] == 1.0 and row["hallucinated"] == 0.0 and row["citation_precision"] == 1.0
    assert row["retrieval_recall"] == 1.0
    wrong = {"prediction": "Paris", "citations": [1], "documents": [DOCS]}
    row = score([QA], [wrong])[0]
    assert row["em"] == 0.0 and row["hallucinated"] == 1.0 and row["citation_precision"] == 0.0


def _names_by_type(world):
    names = {}
    for e in world.entities.values():
        names.setdefault(e.type, []).append(e.name)
    return names


def test_drill_world_has_the_real_places_and_fresh_people():
    from nanochat_core.data.world import build_world
    real = build_world(3, n_people=60, n_cities=8, n_countries=2, n_companies=8, n_universities=4)
    names = _names_by_type(real)
    drill = fresh_people_world("drill:3", names, n_people=200)
    got = _names_by_type(drill)
    for t in ("city", "country", "company", "university"):  # the answers held-out questions have
        assert got[t] == names[t]
    taken = [n.lower() for ns in names.values() for n in ns]
    assert len(got["person"]) == 200
    for n in got["person"]:  # no drill person equals, contains, or sits inside a real name
        n = n.lower()
        assert not any(n in t or t in n for t in taken), (n, [t for t in taken if n in t or t in n])
    # facts are drawn anew: drill people's answers are not the real people's in disguise
    born = [drill.name(drill.facts[p]["born_in"]) for p in drill.ids("person")]
    assert len(set(born)) > 4
    with pytest.raises(ValueError, match="university"):
        fresh_people_world("drill:3", {t: v for t, v in names.items() if t != "university"}, 10)


def test_world_drills_answer_from_the_shown_documents_or_abstain():
    from nanochat_core.data.world import build_world
    real = build_world(5, n_people=10, n_cities=8, n_countries=2, n_companies=8, n_universities=4)
    drill = fresh_people_world("drill:5", _names_by_type(real), n_people=80)
    convs = rag.world_drills(drill, 200, 3, 4, random.Random(0))
    answers = abstained = 0
    for c in convs:
        assert c[0]["role"] == "user" and c[1]["role"] == "documents"  # the evaluation format first
        docs = c[1]["documents"]
        assert len(docs) == 3 and len({d["id"] for d in docs}) == 3
        turns = [m for m in c if m["role"] != "documents"]
        assert 1 <= len(turns) // 2 <= 4 and [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2)
        for user, reply in zip(turns[::2], turns[1::2]):
            answers += 1
            shown = [d for d in docs if d["title"] in user["content"]]  # the question names its subject
            if reply["content"] == ABSTAIN:
                abstained += 1
                continue
            text, cites = parse_answer(reply["content"])
            assert len(shown) == 1 and text in shown[0]["text"]  # copyable from the subject's document...
            assert cites == [docs.index(shown[0]) + 1]  # ...which is the one cited
    # missing facts and unseen subjects give some abstentions, not most
    assert 0.03 < abstained / answers < 0.4


def test_stage_drills_share_the_kbs_places_but_never_its_people():
    from types import SimpleNamespace

    from nanochat_core.data.world import build_world
    real = build_world(4, n_people=60, n_cities=8, n_countries=2, n_companies=8, n_universities=4)
    kb = SimpleNamespace(docs=real.kb_documents())
    people = [d["title"].lower() for d in kb.docs if d["metadata"]["entity_type"] == "person"]
    places = {d["title"] for d in kb.docs if d["metadata"]["entity_type"] != "person"}
    p = {**DEFAULTS["midtrain"], "seed": 1, "drills": 25, "drill_questions": 3, "drill_people": 100, "drill_docs": 4}

    def _drills(p):
        return stages.midtrain_conversations(p, [], kb)  # no questions: the drills alone
    convs = _drills(p)
    assert len(convs) == 25
    shown = set()
    for c in convs:
        docs = c[1]["documents"]
        assert len(docs) == 4  # drill_docs
        for d in docs:
            assert not any(d["title"].lower() in r or r in d["title"].lower() for r in people)
            shown |= {n for n in places if n in d["text"]}
    assert len(shown) > len(places) / 2  # the drills' answers are the KB's places, companies, universities
    assert _drills({**p, "drills": 0}) == []
    assert all(len(c[1]["documents"]) == 1 for c in _drills({**p, "drill_docs": 1}))


def test_retrieved_drills_show_the_drill_kbs_top_k_and_answer_from_it():
    """The RAG stage's drills: the block is the drill world's own top-k (documents sharing the
    question's words, as real retrieval gives), the subject's document is usually first, a
    left-out subject document means abstaining, and an answer is read from the cited one."""
    from nanochat_core.data.world import build_world
    from nanochat_core.retrieval import KnowledgeBase
    real = build_world(4, n_people=60, n_cities=8, n_countries=2, n_companies=8, n_universities=4)
    kb = KnowledgeBase.build(real.kb_documents(), None, ["bm25"])
    p = {**DEFAULTS["rag_finetune"], "seed": 1, "drills": 300, "drill_people": 100, "k": 3, "abstain_frac": 0.2}
    convs = stages.rag_conversations(p, [], kb)
    assert len(convs) == 300
    first = abstained = left_out = distractors = naming = 0
    for user, block, reply in convs:
        docs = block["documents"]
        assert user["role"] == "user" and block["role"] == "documents" and len(docs) <= 3  # BM25: score > 0 only
        subject = [d for d in docs if d["title"] in user["content"]]
        if reply["content"] == ABSTAIN:
            abstained += 1
            left_out += not subject
            continue
        text, cites = parse_answer(reply["content"])
        assert len(subject) == 1 and text in subject[0]["text"] and cites == [docs.index(subject[0]) + 1]
        first += cites == [1]
        name = set(subject[0]["title"].lower().split())
        for d in docs:
            if d is not subject[0]:
                distractors += 1
                naming += bool(name & set(re.findall(r"\w+", d["text"].lower())))
    answered = len(convs) - abstained
    assert first / answered > 0.8  # BM25 ranks the subject's document first, as on the real KB
    assert 0.1 < left_out / len(convs) < 0.3  # abstain_frac (0.2) of blocks lack the subject
    # Many distractors name the subject (a company it founded, a city's natives): the hard
    # kind, which random documents rarely are (a name is in a few % of this world's docs).
    assert naming / distractors > 0.3
    assert stages.rag_conversations({**p, "drills": 0}, [], kb) == []


def test_trajectory_drills_search_for_names_they_can_copy():
    """REFRAG's drills: gold question-first trajectories over the drill world's KB. Every
    follow-up search names something the model has read (the question, or a block), never a
    real person, and the answer is in a block: copying, not recall, solves them. Every bridge is
    searched for, even when its document is already on screen."""
    from nanochat_core.data.world import build_world
    from nanochat_core.retrieval import KnowledgeBase
    real = build_world(4, n_people=60, n_cities=8, n_countries=2, n_companies=8, n_universities=4)
    kb = KnowledgeBase.build(real.kb_documents(), None, ["bm25"])
    people = {d["title"] for d in kb.docs if d["metadata"]["entity_type"] == "person"}
    p = {**DEFAULTS["refrag_finetune"], "seed": 1, "drills": 200, "drill_people": 100, "question_types": ["2hop", "3hop"]}
    convs = stages.refrag_conversations(p, [], kb)
    assert len(convs) == 200
    for c in convs:
        assert c[0]["role"] == "user" and c[-1]["role"] == "assistant"
        searches = [m["content"] for m in c if m["role"] == "search"]
        assert c[1]["role"] == "documents" and len(searches) <= p["max_hops"] - 1  # question first
        assert not set(searches) & people
        seen = c[0]["content"]
        for m in c[1:-1]:
            if m["role"] == "search":
                assert m["content"] in seen  # a name from the question or a block shown
            else:
                seen += " " + " ".join(d["title"] + " " + d["text"] for d in m["documents"])
        answer, cites = parse_answer(c[-1]["content"])
        last = c[-2]["documents"]
        assert answer in seen
        # the citations number the last block, and each cited document holds the answer; an
        # answer found in an earlier block (its hop was on screen before the search) cites nothing
        assert all(answer in last[n - 1]["text"] for n in cites)
        if not cites:
            assert any(answer in d["text"] for m in c[1:-2] if m["role"] == "documents" for d in m["documents"])
    # every bridge is searched for: each composed chain makes at least one search, and 3-hop
    # chains reach the limit
    hops = [len([m for m in c if m["role"] == "search"]) for c in convs]
    assert max(hops) == p["max_hops"] - 1 and min(hops) >= 1
    assert stages.refrag_conversations({**p, "drills": 0}, [], kb) == []


def _small_world(seed=6):
    from nanochat_core.data.questions import make_questions
    from nanochat_core.data.world import build_world
    from nanochat_core.retrieval import KnowledgeBase
    world = build_world(seed, n_people=60, n_cities=8, n_countries=2, n_companies=8, n_universities=4)
    kb = KnowledgeBase.build(world.kb_documents(), None, ["bm25"])
    qa = make_questions(world, seed, {"single": 40, "2hop": 30, "3hop": 10, "unanswerable": 40}, {"single": 5})[0]
    return kb, qa["train"]


def test_refrag_single_shot_mix_keeps_abstention_examples():
    """REFRAG's single-shot RAG share draws unanswerable questions too; without them the
    stage unlearned abstaining (measured: 0.78 -> 0.00 on unanswerables)."""
    kb, qa = _small_world()
    p = {**DEFAULTS["refrag_finetune"], "rag_mix": 1.0, "drills": 0}
    single_shot = [c for c in stages.refrag_conversations(p, qa, kb) if c[1]["role"] == "documents"]
    assert single_shot and any(c[-1]["content"] == ABSTAIN for c in single_shot)


def test_refrag_trajectories_are_question_first_and_respect_max_hops():
    """Hop 1 is the question's own top-k (what single-shot RAG shows); each later block is a
    search for a gold hop's entity and shows only documents not shown before; at most
    max_hops blocks; the answer is cited in the last block when its gold document is there."""
    kb, qa = _small_world()
    p = {**DEFAULTS["refrag_finetune"], "rag_mix": 0.0, "drills": 0, "question_types": ["2hop", "3hop"]}
    for max_hops in (2, 3):
        convs = stages.refrag_conversations({**p, "max_hops": max_hops}, qa, kb)
        multi = [q for q in qa if q["type"] in ("2hop", "3hop") and len(q["hops"]) <= max_hops]
        assert len(convs) == len(multi) and convs
        for c, q in zip(convs, multi):
            blocks = [m["documents"] for m in c if m["role"] == "documents"]
            assert c[0] == {"role": "user", "content": q["question"]} and c[1]["role"] == "documents"
            assert 1 <= len(blocks) <= max_hops
            ids = [d["id"] for b in blocks for d in b]
            assert len(ids) == len(set(ids))  # nothing shown twice
            hop_queries = {h["query"] for h in q["hops"]}
            assert all(m["content"] in hop_queries for m in c if m["role"] == "search")
            assert {i for hop in q["gold_doc_ids"] for i in hop} <= set(ids)  # every gold document on screen
        # hop 1 equals single-shot RAG's block whenever the subject's document is in it
        first = [c[1]["documents"] for c in convs]
        rag_blocks = rag.retrieve(kb, [q["question"] for q in multi], p["k"], p["retriever"])
        same = [a == b for a, b, q in zip(first, rag_blocks, multi) if q["hops"][0]["doc_id"] in {d["id"] for d in b}]
        assert same and all(same)


@pytest.mark.parametrize("stage, knob", [("midtrain", "drills"), ("midtrain", "reading_frac"),
                                         ("rag_finetune", "drills"), ("refrag_finetune", "drills"),
                                         ("refrag_finetune", "rag_mix")])
def test_resizing_one_source_leaves_the_others_examples_alone(stage, knob):
    """One seeded rng per data source: changing how many examples one source makes changes
    no example of another source (with a shared rng, every later draw shifted)."""
    kb, qa = _small_world()
    build = {"midtrain": stages.midtrain_conversations, "rag_finetune": stages.rag_conversations,
             "refrag_finetune": stages.refrag_conversations}[stage]
    p = {**DEFAULTS[stage], "drill_people": 100, "drills": 40}
    bigger = {"drills": 80, "reading_frac": 0.4, "rag_mix": 0.6}[knob]
    if stage == "midtrain":
        p.update(reading_frac=0.2, closed_book_frac=0.3)
    q = {**p, knob: bigger}
    a, b = build(p, qa, kb), build(q, qa, kb)
    # Drills come last, exactly p["drills"] of them. (Their texts cannot tell them apart:
    # the drill world reuses the KB's places, so "Which country is Lube in?" is in both.)
    real_a, drills_a = a[:len(a) - p["drills"]], a[len(a) - p["drills"]:]
    real_b, drills_b = b[:len(b) - q["drills"]], b[len(b) - q["drills"]:]
    assert len(real_a) == len(build({**p, "drills": 0}, qa, kb))
    if knob == "drills":
        assert real_a == real_b and drills_a != drills_b
    else:
        assert drills_a == drills_b
        kept = {"reading_frac": lambda c: len(c) == 2,             # closed-book QA
                "rag_mix": lambda c: c[1]["role"] == "search"}[knob]  # trajectories
        assert [c for c in real_a if kept(c)] == [c for c in real_b if kept(c)]
        assert [c for c in real_a if not kept(c)] != [c for c in real_b if not kept(c)]


def test_a_k_range_draws_every_block_size_and_a_fixed_k_draws_nothing():
    """rag_finetune with 1 <= k_min < k (the architecture study's 1-8 documents): each block's
    size is a uniform draw from [k_min, k]; with k_min 0 (the default) or k no extra draw is
    made, so the default's training set is what it was before k_min existed."""
    from nanochat_core.data.world import build_world
    from nanochat_core.retrieval import KnowledgeBase
    real = build_world(4, n_people=60, n_cities=8, n_countries=2, n_companies=8, n_universities=4)
    kb = KnowledgeBase.build(real.kb_documents(), None, ["bm25"])
    qs = [d["title"] + " city company university" for d in kb.docs[:200]]  # many BM25 hits each
    gold = [{d["id"]} for d in kb.docs[:200]]
    sizes = [len(b) for b in rag.retrieved_blocks(kb, qs, gold, 8, "bm25", 0.0, random.Random(0), k_min=1)]
    assert set(sizes) == set(range(1, 9))
    assert all(2 <= rag.draw_k(8, 2, random.Random(i)) <= 8 for i in range(200))
    # A fixed k draws exactly what the code before k_min drew: one abstain draw per question.
    fixed_rng, old_rng = random.Random(1), random.Random(1)
    fixed = rag.retrieved_blocks(kb, qs, gold, 3, "bm25", 0.2, fixed_rng, k_min=0)
    old = []
    for hits, g in zip(rag.retrieve(kb, qs, 3 + 3, "bm25"), gold):
        if old_rng.random() < 0.2:
            hits = [d for d in hits if d["id"] not in g]
        old.append(hits[:3])
    assert fixed == old and fixed_rng.random() == old_rng.random()
    assert rag.draw_k(3, 0, None) == rag.draw_k(3, 3, None) == 3  # no rng is touched
    p = {**DEFAULTS["rag_finetune"], "seed": 1, "drills": 200, "drill_people": 100, "k": 6, "k_min": 2}
    blocks = [len(c[1]["documents"]) for c in stages.rag_conversations(p, [], kb)]
    assert max(blocks) == 6 and set(blocks) >= {2, 3, 4, 5, 6}  # fewer only where BM25 has fewer hits


def test_rl_drill_pool_asks_about_fresh_people_whose_chains_are_in_the_drill_kb():
    """RL's drill questions (rl_drill_frac): only the asked types within max_hops, every gold
    document in the drill KB the rollouts search, and other people than the warm-up's drills."""
    from nanochat_core.data.world import build_world
    from nanochat_core.retrieval import KnowledgeBase
    real = build_world(4, n_people=60, n_cities=8, n_countries=2, n_companies=8, n_universities=4)
    kb = KnowledgeBase.build(real.kb_documents(), None, ["bm25"])
    p = {**DEFAULTS["refrag_finetune"], "drill_people": 100}
    world = stages.drill_world(p, kb, seed="rl:45")
    dkb = stages.drill_kb(world, kb, random.Random(0))
    qs = stages.drill_questions(world, 45, ["2hop", "unanswerable"], 2)
    assert {q["type"] for q in qs} == {"2hop", "unanswerable"} and all(len(q["hops"]) <= 2 for q in qs)
    ids = {d["id"] for d in dkb.docs}
    assert all(d in ids for q in qs for hop in q["gold_doc_ids"] for d in hop)
    people = lambda w: {w.name(e) for e in w.ids("person")}
    assert not people(world) & people(stages.drill_world(p, kb))  # the warm-up's drill world (stage seed)


def test_holdout_questions_are_left_to_rl():
    """holdout_frac: a share of each multi-hop type's train questions is kept out of the warm-up's
    trajectories and is then RL's only multi-hop pool; the draw depends on the warm-up's seed,
    not on rl_seed (so another RL seed keeps the same warm-up); 0 holds out nothing."""
    kb, qa = _small_world()
    p = {**DEFAULTS["refrag_finetune"], "rag_mix": 0.0, "drills": 0, "question_types": ["2hop", "3hop"],
         "holdout_frac": 0.5}
    held = stages.rl_holdout(p, qa)
    by_type = {t: [q for q in qa if q["type"] == t] for t in ("2hop", "3hop")}
    for t, qs in by_type.items():
        assert len({q["id"] for q in qs} & held) == round(len(qs) * 0.5) > 0
    assert held <= {q["id"] for qs in by_type.values() for q in qs}
    asked = [c[0]["content"] for c in stages.refrag_conversations(p, qa, kb)]
    multi = [q for q in qa if q["type"] in ("2hop", "3hop") and len(q["hops"]) <= p["max_hops"]]
    assert asked == [q["question"] for q in multi if q["id"] not in held]
    pool, _ = stages.rl_pool(p, qa)
    assert {q["id"] for q in pool if q["type"] in ("2hop", "3hop")} == {q["id"] for q in multi if q["id"] in held}
    assert {q["id"] for q in pool if q["type"] not in ("2hop", "3hop")} == \
        {q["id"] for q in qa if q["type"] in ("single", "unanswerable")}  # rl_question_types' other types: all
    assert stages.rl_holdout({**p, "rl_seed": 7}, qa) == held and stages.rl_holdout({**p, "seed": 7}, qa) != held
    none = {**p, "holdout_frac": 0.0}
    assert stages.rl_holdout(none, qa) == set() and len(stages.refrag_conversations(none, qa, kb)) == len(multi)
    assert len(stages.rl_pool(none, qa)[0]) == len([q for q in qa if len(q["hops"]) <= p["max_hops"]])


def test_rl_people_questions_are_rls_only_pool():
    """With RL people's questions (data/qa/rl.jsonl), RL draws every question from them (of
    rl_question_types, at most max_hops hops) and none from train; holdout_frac must then be 0."""
    _, qa = _small_world()
    rl_qs = [{**q, "id": f"rl-{i}", "entity_split": "rl"} for i, q in enumerate(qa[:40])]
    p = {**DEFAULTS["refrag_finetune"], "rl_question_types": ["2hop", "single"], "max_hops": 2}
    pool, held = stages.rl_pool(p, qa, rl_qs)
    want = [q["id"] for q in rl_qs if q["type"] in ("2hop", "single") and len(q["hops"]) <= 2]
    assert [q["id"] for q in pool] == want and want and held == set()
    assert {q["id"] for q in stages.rl_pool(p, qa)[0]} <= {q["id"] for q in qa}  # no rl file: train questions
    with pytest.raises(ValueError, match="holdout_frac must be 0 when the world has RL people"):
        stages.rl_pool({**p, "holdout_frac": 0.5}, qa, rl_qs)


@pytest.mark.parametrize("stage", ["midtrain", "rag_finetune", "refrag_finetune"])
def test_only_drill_documents_carry_a_loss_weight(stage):
    """drill_doc_loss weighs the drill world's documents (people named nowhere else) and never
    a block of the real KB, whose documents hold held-out people's facts; 0 weighs nothing."""
    from nanochat_core.data.world import build_world
    from nanochat_core.retrieval import KnowledgeBase
    real = build_world(4, n_people=60, n_cities=8, n_countries=2, n_companies=8, n_universities=4)
    kb = KnowledgeBase.build(real.kb_documents(), None, ["bm25"])
    real_text = {d["id"]: d["text"] for d in kb.docs}
    real_title = {d["id"]: d["title"] for d in kb.docs}
    qa = [{**q, "id": f"q{i}"} for i, q in enumerate(stages.drill_questions(real, 1, ["single", "2hop", "unanswerable"], 3))]
    p = {**DEFAULTS[stage], "seed": 1, "drills": 40, "drill_people": 100, "drill_doc_loss": 0.05}
    make = {"midtrain": stages.midtrain_conversations, "rag_finetune": stages.rag_conversations,
            "refrag_finetune": stages.refrag_conversations}[stage]
    weighted = unweighted = 0
    for c in make(p, qa, kb):
        for m in c:
            if m["role"] == "documents":
                if "loss_weight" in m:  # drill documents: never a real one (drill places share names, not text)
                    assert m["loss_weight"] == 0.05
                    assert not any(real_text.get(d["id"]) == d["text"] for d in m["documents"])
                    weighted += 1
                else:  # the real KB's (midtrain may have swapped an answer in the text, never a title)
                    assert all(real_title.get(d["id"]) == d["title"] for d in m["documents"])
                    unweighted += 1
    assert weighted >= 40 and unweighted > 0
    assert not any("loss_weight" in m for c in make({**p, "drill_doc_loss": 0.0}, qa, kb) for m in c)


def test_swap_question_gives_another_value_of_the_relation_and_swap_docs_rewrites_titles_too():
    pool = {"person.born_in": ["Kiko", "Miles", "Kikoland"]}
    rng = random.Random(0)
    for _ in range(20):
        qa, (old, new) = rag.swap_question(QA, pool, rng)
        assert old == "Kiko" and new == "Miles" == qa["answers"][0]  # "Kikoland" contains "Kiko": never chosen
    assert QA["answers"] == ["Kiko"]
    docs = rag.swap_docs([{"id": "c", "title": "Kiko", "text": "Kiko is a city. Kikoland is not."}], "Kiko", "Miles")
    assert docs == [{"id": "c", "title": "Miles", "text": "Miles is a city. Kikoland is not."}]
    assert rag.swap_docs(docs, "Miles", r"M\1 \g<0>")[0]["title"] == r"M\1 \g<0>"  # the new value is text, not a template
    # an abstention, an unknown relation or a relation with no other value: nothing to swap
    assert rag.swap_question({**QA, "answers": [ABSTAIN]}, {"person.born_in": [ABSTAIN, "Miles"]}, rng)[1] is None
    assert rag.swap_question({**QA, "relation": "x.y"}, pool, rng) == ({**QA, "relation": "x.y"}, None)
    assert rag.swap_question(QA, {"person.born_in": ["Kiko"]}, rng) == (QA, None)
    named = {**QA, "question": "Where was Miles Lovi born?"}  # Miles is in the question: not a new answer
    assert rag.swap_question(named, pool, rng) == (named, None)
