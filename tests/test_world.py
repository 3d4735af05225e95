"""The synthetic world: names, documents, the train/test split, and the question sets."""
import json
import re

import pytest

from nanochat_core.data.questions import make_questions
from nanochat_core.data.templates import QUESTION_TEMPLATES
from nanochat_core.data.world import ABSTAIN, build_world, split_sentences

TRAIN = {"single": 400, "2hop": 300, "3hop": 200, "unanswerable": 100}
EVAL = {"single": 100, "2hop": 100, "3hop": 100, "unanswerable": 50}


def small_world(seed=3):
    return build_world(seed, n_people=90, n_cities=12, n_countries=3, n_companies=15, n_universities=5,
                       test_fraction=0.25, missing_fact_rate=0.2, n_counterfactual=12)


@pytest.fixture(scope="module")
def world():
    return small_world()


@pytest.fixture(scope="module")
def kb(world):
    return {d["id"]: d for d in world.kb_documents()}


@pytest.fixture(scope="module")
def corpus(world):
    return world.corpus_documents(paraphrases=3)[0]


@pytest.fixture(scope="module")
def qa(world):
    return make_questions(world, 3, TRAIN, EVAL, n_known=20, val_fraction=0.3)[0]


def all_questions(qa):
    return [r for recs in qa.values() for r in recs]


def states(text, *parts):
    """True when one sentence of `text` contains every part: a fact is stated, not two facts
    that happen to share a document."""
    return any(all(p in s for p in parts) for s in split_sentences(text))


def test_names_unique_compact_and_never_inside_each_other(world):
    names = [e.name for e in world.entities.values()]
    assert len(set(names)) == len(names)
    low = [n.lower() for n in names]
    for i, a in enumerate(low):
        assert not any(a in b for j, b in enumerate(low) if j != i), a
    syll = r"(?:[bdfghklmnprstvz][aeiou])"
    for e in world.entities.values():
        if e.type == "person":
            assert re.fullmatch(rf"{syll}{{2}}[nrls]? {syll}{{2,3}}[nrls]?", e.name.lower()), e.name
        if e.type == "city":
            assert re.fullmatch(rf"{syll}{{2,3}}[nrls]?", e.name.lower()), e.name


def test_deterministic_from_seed():
    a, b, c = small_world(3), small_world(3), small_world(4)
    def dump(w):
        return json.dumps([w.kb_documents(), w.corpus_documents(2), make_questions(w, 3, TRAIN, EVAL, 20, 0.3)],
                          sort_keys=True)

    assert dump(a) == dump(b)
    assert dump(a) != dump(c)


def test_documents_short_and_varied(world, kb, corpus):
    for d in kb.values():
        assert d["title"] == world.entities[d["id"]].name
        assert 4 <= len(d["text"].split()) <= 80, d
    # Several templates and orders: the renderings of one person differ.
    person = next(e.id for e in world.entities.values() if e.type == "person" and e.split == "train")
    texts = {d["text"] for d in corpus if d["id"] == person}
    assert len(texts) >= 2
    first_sentences = {split_sentences(d["text"])[0].replace(d["title"], "X") for d in kb.values()
                       if d["metadata"]["entity_type"] == "person"}
    assert len(first_sentences) >= 6


def test_facts_also_appear_in_other_entities_documents(world, kb):
    for co in world.ids("company"):
        founder = world.kb_facts[co]["founded_by"]
        assert states(kb[co]["text"], world.name(founder))
        assert states(kb[founder]["text"], world.name(founder), world.name(co))
    # A city's document names companies headquartered there and (a sample of) its natives.
    for city in world.ids("city"):
        natives = [p for p in world.ids("person") if world.kb_facts[p]["born_in"] == city]
        hq = [c for c in world.ids("company") if world.kb_facts[c]["headquartered_in"] == city]
        if natives:
            assert any(world.name(p) in kb[city]["text"] for p in natives)
        if hq:
            assert any(world.name(c) in kb[city]["text"] for c in hq)
        for p in world.ids("person"):  # and never a person born elsewhere
            if world.kb_facts[p]["born_in"] != city:
                assert world.name(p) not in kb[city]["text"]


def test_test_people_only_in_the_kb(world, kb, corpus, qa):
    test_names = [world.name(p) for p in world.test_people()]
    assert len(test_names) == round(0.25 * 90)
    corpus_text = "\n".join(d["text"] for d in corpus)
    for n in test_names:
        assert n not in corpus_text
        assert n in kb[next(p for p in world.test_people() if world.name(p) == n)]["text"]
    # Their facts also reach other KB documents (e.g. a company they founded), not the corpus.
    founded_by_test = [c for c in world.ids("company") if world.entities[world.facts[c]["founded_by"]].split == "test"]
    assert founded_by_test
    for c in founded_by_test:
        assert world.name(world.facts[c]["founded_by"]) in kb[c]["text"]
        assert any(d["id"] == c for d in corpus)  # the company is in the corpus, without its founder
    train_text = json.dumps(qa["train"])
    assert not any(n in train_text for n in test_names)
    # Every train entity is in the corpus.
    assert {d["id"] for d in corpus} == {e for e in world.entities if e not in set(world.test_people())}


def test_rl_people_are_held_out_for_rl_questions_alone():
    """rl_fraction: RL people come from the train people (test people stay the same), are named
    only in the KB like test people, and their questions go to qa["rl"] alone: every rl question
    touches an RL person and no test person; train questions touch none."""
    base, w = small_world(), build_world(3, n_people=90, n_cities=12, n_countries=3, n_companies=15, n_universities=5,
                                         test_fraction=0.25, missing_fact_rate=0.2, n_counterfactual=12,
                                         rl_fraction=0.2)
    assert w.test_people() == base.test_people()
    rl_people = [e.id for e in w.entities.values() if e.split == "rl"]
    assert len(rl_people) == round(0.2 * 90) and not set(rl_people) & set(w.test_people())
    corpus_text = "\n".join(d["text"] for d in w.corpus_documents(paraphrases=3)[0])
    kb = {d["id"]: d["text"] for d in w.kb_documents()}
    for p in rl_people:
        assert w.name(p) not in corpus_text and w.name(p) in kb[p]
    qa = make_questions(w, 3, TRAIN, EVAL, n_known=20, val_fraction=0.3)[0]
    assert {r["type"] for r in qa["rl"]} == {"single", "2hop", "3hop", "unanswerable"}
    names = {w.name(p): w.entities[p].split for p in w.ids("person")}
    def splits(r):  # the splits of the people a question's chain names
        return {names[x] for h in r["hops"] for x in (h["query"], h["answer"]) if x in names}
    assert all("rl" in splits(r) and "test" not in splits(r) and r["entity_split"] == "rl" for r in qa["rl"])
    assert all(splits(r) <= {"train"} for r in qa["train"])
    assert all("test" in splits(r) for r in qa["val"])
    assert len({r["id"] for r in all_questions(qa)}) == len(all_questions(qa))
    # Without RL people the rl file is empty.
    assert make_questions(base, 3, TRAIN, EVAL, n_known=20, val_fraction=0.3)[0]["rl"] == []
    with pytest.raises(ValueError, match="rl_fraction=0.8 .* at least one must stay a train person"):
        build_world(3, n_people=90, test_fraction=0.25, rl_fraction=0.8)


def test_every_type_present_and_splits_consistent(qa):
    for name in ("train", "val", "test"):
        assert qa[name]
    types = {r["type"] for r in qa["train"]}
    assert types == {"single", "2hop", "3hop", "unanswerable"}
    assert {r["type"] for r in qa["test"]} == {"single", "2hop", "3hop", "unanswerable", "counterfactual"}
    assert all(r["entity_split"] == "train" for r in qa["train"])
    assert all(r["entity_split"] == "test" for r in qa["val"])
    for r in qa["test"]:
        expect = "train" if r["type"] == "counterfactual" or r.get("known") else "test"
        assert r["entity_split"] == expect, r
    assert sum(1 for r in qa["test"] if r.get("known")) == 20
    ids = [r["id"] for r in all_questions(qa)]
    assert len(ids) == len(set(ids))
    # Known-entity probes are held out of train: no (subject, relation) overlap.
    train_facts = {(r["subject_id"], r["relation"]) for r in qa["train"] if r["type"] == "single"}
    assert not any((r["subject_id"], r["relation"]) in train_facts for r in qa["test"] if r.get("known"))
    # Several phrasings per relation.
    person_born = {r["question"].split(" ")[0] for r in all_questions(qa) if r["relation"] == "person.born_in"}
    assert len(person_born) >= 2


def test_answers_are_stated_in_the_gold_documents(world, kb, qa):
    checked = 0
    for r in all_questions(qa):
        assert r["gold_doc_ids"] == [[h["doc_id"]] for h in r["hops"]]
        assert len(r["hops"]) == {"single": 1, "counterfactual": 1, "2hop": 2, "3hop": 3}.get(r["type"], len(r["hops"]))
        assert r["question"].endswith("?") and r["subject"] in r["question"]
        if r["type"] == "unanswerable":
            continue
        assert r["answers"] == [r["hops"][-1]["answer"]]
        for i, h in enumerate(r["hops"]):
            doc = kb[h["doc_id"]]
            assert h["query"] == doc["title"]
            assert states(doc["text"], h["query"], h["answer"]), (r, doc)  # this hop's doc states the next entity
            if i + 1 < len(r["hops"]):
                assert r["hops"][i + 1]["query"] == h["answer"]
        checked += 1
    assert checked > 500


def test_unanswerable_facts_are_in_no_kb_document(world, kb, qa):
    un = [r for r in all_questions(qa) if r["type"] == "unanswerable"]
    assert any(len(r["hops"]) == 1 and r["relation"].count(".") == 1 for r in un)  # single-hop ones
    assert any(len(r["hops"]) > 1 for r in un)  # and ones that break after a hop
    companies = {world.name(c): c for c in world.ids("company")}
    universities = [world.name(u) for u in world.ids("university")]
    for r in un:
        assert r["answers"] == [ABSTAIN] and r["hops"][-1]["answer"] == ABSTAIN
        last = r["hops"][-1]
        rel = r["relation"].split(".")[len(r["hops"])]
        subject = last["query"]
        assert rel not in world.kb_facts[last["doc_id"]]
        sentences = [s for d in kb.values() for s in split_sentences(d["text"]) if subject in s]
        assert sentences
        for s in sentences:
            if rel == "birth_year":
                assert not re.search(r"\b\d{4}\b", s), s
            elif rel == "studied_at":
                assert not any(u in s for u in universities), s
            elif rel == "works_at":  # only companies the person founded may share a sentence
                for name, c in companies.items():
                    if name in s:
                        assert world.kb_facts[c]["founded_by"] == last["doc_id"], s


def test_counterfactual_edits_kb_but_not_corpus(world, kb, corpus, qa):
    cf = [r for r in qa["test"] if r["type"] == "counterfactual"]
    assert len(cf) == len(world.edits) == 12
    assert len({r["relation"] for r in cf}) >= 3
    for r in cf:
        subj, new, old = r["subject"], r["answers"][0], r["original_answer"]
        assert new != old
        assert states(kb[r["subject_id"]]["text"], subj, new)
        for d in kb.values():  # the original is stated nowhere in the KB
            assert not states(d["text"], subj, old), (r, d)
        twins = [d for d in corpus if d["id"] == r["subject_id"]]
        assert twins and all(states(d["text"], subj, old) for d in twins)
        assert not any(states(d["text"], subj, new) for d in corpus)
    # No other question uses an edited fact: the edit is only ever taught by the KB.
    edited = {(x["subject"], x["relation"]) for x in world.edits}
    for q in all_questions(qa):
        if q["type"] != "counterfactual":
            rels = q["relation"].split(".")[1:]
            assert not any((h["doc_id"], rels[i]) in edited for i, h in enumerate(q["hops"]))


def test_multi_hop_templates_cover_each_chain(qa):
    seen = {r["relation"] for r in all_questions(qa)}
    multi = [k for k in QUESTION_TEMPLATES if k.count(".") >= 2]
    assert len(seen & set(multi)) >= len(multi) - 1
