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
