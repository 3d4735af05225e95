"""Table 3's HotpotQA rows (benchmarks/real_retrieval.py) on a hand-made two-question file:
paragraphs are pooled once, two-step shows k distinct documents, and the oracle's second query
(the missed gold title) finds the bridge that the question alone does not."""
import json

import pytest

from benchmarks.real_retrieval import hotpot_table, load_hotpot


def _row(q, paras):
    return {"question_text": q, "contexts": [{"title": t, "paragraph_text": x, "is_supporting": s} for t, x, s in paras]}


@pytest.fixture
def hotpot(tmp_path):
    shared = ("Zorvex Prize", "The Zorvex Prize is given in Hallen every spring.", False)
    rows = [
        _row("Which river flows through the city where Ana Varo was born?",
             [("Ana Varo", "Ana Varo was born in Quellport.", True),
              ("Quellport", "Quellport lies on the Mirrow.", True), shared,
              ("Bel Tarn", "Bel Tarn was born in Osk, a city on a river that flows north.", False)]),
        _row("Who founded the company that makes the Lumo lamp?",
             [("Lumo lamp", "The Lumo lamp is made by Trell Works.", True),
              ("Trell Works", "Ida Pell started it in 1950.", True), shared,
              ("Kell Co", "Kell Co is a company founded to make lamps.", False)]),
    ]
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_paragraphs_are_pooled_once_and_gold_pairs_kept(hotpot):
    docs, qs = load_hotpot(hotpot)
    assert len(docs) == 7  # the shared distractor appears once
    assert all(len(q["gold"]) == 2 for q in qs)


def test_oracle_second_hop_reaches_the_bridge(hotpot):
    t = hotpot_table(hotpot, "bm25")["both_gold_recall"]
    # the question names only the first paragraph's subject; the bridge ("Quellport", "Trell
    # Works") shares no word with it, so the question's top 2 misses it and the gold title finds it
    assert t["oracle (gold bridge title)"][2] == 1.0
    assert t["single-shot"][2] < 1.0


def test_a_row_without_two_gold_paragraphs_is_an_error_naming_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(_row("q?", [("A", "a", True), ("B", "b", False)])) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected 2 supporting"):
        load_hotpot(p)
