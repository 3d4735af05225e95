"""RAG conversation building: cited targets, abstention when gold is missing, answer parsing,
and the counterfactual swap drill."""
import random

from nanochat_core import rag
from nanochat_core.data.world import ABSTAIN

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
    assert rag.parse_answer("Kiko [2]") == ("Kiko", [2])
    assert rag.parse_answer("Kiko [1] [3]") == ("Kiko", [1, 3])
    assert rag.parse_answer(ABSTAIN) == (ABSTAIN, [])


def test_swap_answer_replaces_whole_words_only():
    pool = {"person.born_in": ["Kiko", "Miles"]}
    qa, docs = rag.swap_answer(QA, DOCS, pool, random.Random(0))
    assert qa["answers"] == ["Miles"]
    assert docs[1]["text"] == "Ada Lovi was born in Miles. Miles is nice."
    assert docs[0]["text"] == "Kikoland is a country."  # "Kiko" inside another word is left alone
    assert QA["answers"] == ["Kiko"]  # the input is not modified


def test_score_supported_and_hallucinated():
    pred = {"prediction": "Kiko", "citations": [2], "documents": [DOCS]}
    row = rag.score([QA], [pred])[0]
    assert row["em"] == 1.0 and row["hallucinated"] == 0.0 and row["citation_precision"] == 1.0
    assert row["retrieval_recall"] == 1.0
    wrong = {"prediction": "Paris", "citations": [1], "documents": [DOCS]}
    row = rag.score([QA], [wrong])[0]
    assert row["em"] == 0.0 and row["hallucinated"] == 1.0 and row["citation_precision"] == 0.0


def test_drill_world_names_never_touch_the_real_worlds():
    from nanochat_core.data.world import build_world
    real = build_world(3, n_people=60, n_cities=8, n_countries=2, n_companies=8, n_universities=4)
    taken = [e.name.lower() for e in real.entities.values()]
    drill = rag.drill_world("drill:3", [e.name for e in real.entities.values()], n_people=200)
    for e in drill.entities.values():
        n = e.name.lower()
        # no drill name equals, contains, or sits inside a real name
        assert not any(n in t or t in n for t in taken), (e.name, [t for t in taken if n in t or t in n])


def test_world_drills_answer_from_the_shown_documents_or_abstain():
    drill = rag.drill_world("drill:5", [], n_people=80)
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
            text, cites = rag.parse_answer(reply["content"])
            assert len(shown) == 1 and text in shown[0]["text"]  # copyable from the subject's document...
            assert cites == [docs.index(shown[0]) + 1]  # ...which is the one cited
    # missing facts and unseen subjects give some abstentions, not most
    assert 0.03 < abstained / answers < 0.4


def test_stage_drills_come_from_a_world_disjoint_from_the_kb():
    from types import SimpleNamespace

    from nanochat_core.data.world import build_world
    from nanochat_core.stages import _drills
    real = build_world(4, n_people=60, n_cities=8, n_countries=2, n_companies=8, n_universities=4)
    kb = SimpleNamespace(docs=real.kb_documents())
    real_names = [d["title"].lower() for d in kb.docs]
    p = {"seed": 1, "drills": 25, "drill_questions": 3, "drill_people": 100, "k": 4}
    convs = _drills(p, kb, random.Random(0))
    assert len(convs) == 25
    for c in convs:
        docs = c[1]["documents"]
        assert len(docs) == 4  # the stage's own k
        for d in docs:
            assert not any(d["title"].lower() in r or r in d["title"].lower() for r in real_names)
    assert _drills({**p, "drills": 0}, kb, random.Random(0)) == []
    midtrain_p = {k: v for k, v in p.items() if k != "k"} | {"n_distractors": 1}
    assert all(len(c[1]["documents"]) == 2 for c in _drills(midtrain_p, kb, random.Random(0)))


def test_refrag_single_shot_mix_keeps_abstention_examples(tmp_path, monkeypatch):
    """REFRAG's single-shot RAG share draws unanswerable questions too; without them the
    stage unlearned abstaining (measured: 0.78 -> 0.00 on unanswerables)."""
    import json

    from nanochat_core import stages
    from nanochat_core.data.world import build_world, make_questions
    from nanochat_core.params import DEFAULTS
    from nanochat_core.retrieval import KnowledgeBase
    world = build_world(6, n_people=60, n_cities=8, n_countries=2, n_companies=8, n_universities=4)
    KnowledgeBase.build(world.kb_documents(), tmp_path / "kb", retrievers=("bm25",))
    qa = make_questions(world, 6, {"single": 40, "2hop": 30, "3hop": 10, "unanswerable": 40}, {"single": 5})[0]
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa["train"]))
    seen = {}
    monkeypatch.setattr(stages, "_finetune", lambda stage, parent, out, convs, *a: seen.setdefault("convs", convs))
    params = {"refrag_finetune": {**DEFAULTS["refrag_finetune"], "rag_mix": 1.0}}
    stages.refrag_finetune(params, qa_dir=tmp_path / "qa", kb_dir=tmp_path / "kb")
    single_shot = [c for c in seen["convs"] if c[1]["role"] == "documents"]
    assert single_shot and any(c[-1]["content"] == ABSTAIN for c in single_shot)
