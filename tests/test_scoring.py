"""How the evaluate stage scores an answer (Table 1), on hand-made questions and answers: one
hallucination rule in every mode, citations against the final block, abstention phrasing,
the means and their counts, the headline ratio, and the report that shows them."""
import csv

import pytest

from nanochat_core.data.world import ABSTAIN
from nanochat_core.eval_report import hallucination_plot, markdown_report
from nanochat_core.evaluation import HELD_OUT, aggregate, citation_scores, headline, heldout_rate, is_abstain, score
from nanochat_core.inference import ground

SINGLE = {"id": "s", "type": "single", "question": "Where was Ada Lovi born?", "answers": ["Palmora"],
          "gold_doc_ids": [["p1"]]}
UNANSWERABLE = {"id": "u", "type": "unanswerable", "question": "Where did Ada Lovi study?", "answers": [ABSTAIN],
                "gold_doc_ids": [["p1"]]}
ADA = {"id": "p1", "title": "Ada Lovi", "text": "Ada Lovi was born in Palmora."}
OTHER = {"id": "c1", "title": "Vessa", "text": "Vessa is a city in Kiko."}
THIRD = {"id": "c2", "title": "Kiko", "text": "Kiko is a country."}


def one(q, prediction, documents=(), citations=()):
    return score([q], [{"prediction": prediction, "citations": list(citations), "documents": list(documents)}])[0]


def test_one_hallucination_rule_in_every_mode():
    # closed-book (no documents): a wrong answer is a hallucination, an abstention is not
    row = one(SINGLE, "Vessa")
    assert (row["em"], row["hallucinated"], row["unsupported"], row["hops"]) == (0.0, 1.0, 1.0, 0)
    row = one(SINGLE, ABSTAIN)
    assert (row["em"], row["hallucinated"], row["abstained"], row["abstention_correct"]) == (0.0, 0.0, 1.0, 0.0)
    assert row["unsupported"] == 0.0
    # ...and a right closed-book answer is no hallucination, though no document supports it
    row = one(SINGLE, "Palmora")
    assert (row["em"], row["hallucinated"], row["unsupported"]) == (1.0, 0.0, 1.0)
    # RAG: correct but in none of the shown documents -> unsupported, not a hallucination
    row = one(SINGLE, "Palmora", [[OTHER, THIRD]], [1])
    assert (row["em"], row["hallucinated"], row["unsupported"], row["hops"]) == (1.0, 0.0, 1.0, 1)
    # RAG: correct and shown -> neither
    row = one(SINGLE, "Palmora", [[OTHER, ADA]], [2])
    assert (row["hallucinated"], row["unsupported"]) == (0.0, 0.0)
    # RAG: wrong, though the wrong answer is in a shown document -> a hallucination, supported
    row = one(SINGLE, "Kiko", [[OTHER, ADA]], [1])
    assert (row["em"], row["hallucinated"], row["unsupported"]) == (0.0, 1.0, 0.0)
    # unanswerable: any answer is a hallucination; abstaining is right
    row = one(UNANSWERABLE, "Palmora", [[ADA]], [1])
    assert (row["em"], row["hallucinated"], row["abstention_correct"]) == (0.0, 1.0, 0.0)
    row = one(UNANSWERABLE, "the sources do not say", [[ADA]])
    assert (row["em"], row["hallucinated"], row["abstained"], row["abstention_correct"]) == (1.0, 0.0, 1.0, 1.0)
    # an empty answer is neither an abstention nor correct
    assert one(SINGLE, "")["hallucinated"] == 1.0


BOSEN = {"id": "p2", "title": "Bosen Buka", "text": "Bosen Buka founded Netas Works."}


@pytest.mark.parametrize("answer, cites, blocks, want", [
    ("Palmora", [2], [[OTHER, ADA]], ("Palmora", [2], False)),            # in a shown document
    ("palmora.", [2], [[OTHER, ADA]], ("palmora.", [2], False)),          # SQuAD normalization
    ("Palmora", [1], [[OTHER], [THIRD, ADA]], ("Palmora", [1], False)),   # any block, not only the last
    ("Ada Lovi", [], [[ADA]], ("Ada Lovi", [], False)),                   # a title counts
    ("Palmora", [1], [[OTHER, THIRD]], (ABSTAIN, [], True)),              # in none: abstain, cite nothing
    ("Bos", [1], [[BOSEN]], (ABSTAIN, [], True)),                         # a name copied half-way
    ("Bosen Buka Works", [1], [[BOSEN]], (ABSTAIN, [], True)),            # words, not a substring
    ("Palmora", [], [], (ABSTAIN, [], True)),                             # nothing shown (an empty hit list)
    (ABSTAIN, [], [[OTHER]], (ABSTAIN, [], False)),                       # an abstention stands
    ("the sources do not say", [], [[OTHER]], ("the sources do not say", [], False)),
    ("", [], [[ADA]], ("", [], False)),                                   # an empty answer stays a failure
])
def test_ground_keeps_answers_a_shown_document_holds_and_abstains_otherwise(answer, cites, blocks, want):
    assert ground(answer, cites, blocks) == want


NETAS = {"id": "c3", "title": "Netas Works", "text": "Netas Works is headquartered in Heba. Bosen Buka founded Netas Works."}
YEAR = {"id": "p3", "title": "Tofe Fagon", "text": "Tofe Fagon was born in 1976."}


@pytest.mark.parametrize("answer, blocks, queries, want", [
    # after a follow-up search the answer must be in a shown document naming the last query
    ("1976", [[NETAS], [BOSEN, YEAR]], ["Q?", "Bosen Buka"], (ABSTAIN, [], True)),  # a year off another document
    ("1976", [[NETAS], [BOSEN, YEAR]], ["Q?", "Tofe Fagon"], ("1976", [], False)),
    ("Heba", [[NETAS], [BOSEN]], ["Q?", "Netas Works"], ("Heba", [], False)),      # read back from hop 1's block
    ("Heba", [[NETAS], [BOSEN]], ["Q?", "netas works "], ("Heba", [], False)),     # case and spaces
    ("Heba", [[NETAS], [BOSEN]], ["Q?", "Bosen Buka", "Zed"], (ABSTAIN, [], True)),  # the last query, not any
    ("Heba", [[NETAS]], ["Q?"], ("Heba", [], False)),                               # no follow-up: as before
    ("Heba", [[NETAS]], [], ("Heba", [], False)),                                   # RAG: no queries
    (ABSTAIN, [[NETAS], [BOSEN]], ["Q?", "Zed"], (ABSTAIN, [], False)),             # an abstention stands
])
def test_after_a_follow_up_the_answer_must_come_from_a_document_naming_the_last_query(answer, blocks, queries, want):
    assert ground(answer, [], blocks, queries) == want


def test_a_grounded_answer_scores_as_the_abstention_and_counts_as_unsupported():
    """inference.ground replaced the model's "Vessa": the row scores the abstention (right on an
    unanswerable question, an abstention with EM 0 on an answerable one) and its unsupported
    says what the model wrote was in no shown document."""
    p = {"prediction": ABSTAIN, "citations": [], "documents": [[ADA]], "ungrounded": True}
    row = score([UNANSWERABLE], [p])[0]
    assert (row["em"], row["hallucinated"], row["abstained"], row["unsupported"]) == (1.0, 0.0, 1.0, 1.0)
    row = score([SINGLE], [p])[0]
    assert (row["em"], row["hallucinated"], row["abstained"], row["unsupported"]) == (0.0, 0.0, 1.0, 1.0)
    # the model's own abstention is no unsupported answer
    row = score([UNANSWERABLE], [{**p, "ungrounded": False}])[0]
    assert (row["em"], row["unsupported"]) == (1.0, 0.0)

def test_an_answer_hidden_inside_a_longer_wrong_one():
    # "Palmora and Vessa" contains the gold answer and cites the gold document: EM 0, F1 as
    # SQuAD's (P = 1/3 of "palmora and vessa", R = 1), a hallucination, and citations that
    # look perfect.
    row = one(SINGLE, "Palmora and Vessa", [[OTHER, ADA]], [2])
    assert row["em"] == 0.0 and row["f1"] == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert row["hallucinated"] == 1.0
    assert row["unsupported"] == 1.0  # the phrase itself is in no document
    assert (row["citation_precision"], row["citation_recall"]) == (1.0, 1.0)
    # shown word for word somewhere: supported, and still a hallucination
    both = {"id": "c3", "title": "Twins", "text": "Palmora and Vessa are twin cities."}
    row = one(SINGLE, "Palmora and Vessa", [[both, ADA]], [1])
    assert (row["hallucinated"], row["unsupported"], row["citation_precision"]) == (1.0, 0.0, 0.0)


def test_citations_are_scored_against_the_final_block():
    block = [OTHER, ADA, THIRD]
    assert citation_scores([2], block, {"p1"}, True) == (1.0, 1.0)
    assert citation_scores([1], block, {"p1"}, True) == (0.0, 0.0)
    assert citation_scores([1, 2], block, {"p1"}, True) == (0.5, 1.0)
    # [7] with 3 documents names no source: a wrong citation, not a dropped one
    assert citation_scores([2, 7], block, {"p1"}, True) == (0.5, 1.0)
    assert citation_scores([7], block, {"p1"}, True) == (0.0, 0.0)
    assert citation_scores([0], block, {"p1"}, True) == (0.0, 0.0)
    # nothing cited: precision undefined; recall 0 when the gold document was there to cite
    assert citation_scores([], block, {"p1"}, True) == (None, 0.0)
    # the gold document not in the block (or no block: closed-book): recall undefined
    assert citation_scores([1], [OTHER, THIRD], {"p1"}, True) == (0.0, None)
    assert citation_scores([], [], {"p1"}, True) == (None, None)
    # unanswerable: recall undefined; a citation is still scored
    assert citation_scores([2], block, {"p1"}, False) == (1.0, None)
    # two gold documents in the block, one cited
    assert citation_scores([1], block, {"c1", "c2"}, True) == (1.0, 0.5)


def test_refrag_citations_number_the_last_block_and_hops_count_blocks():
    two_hop = {**SINGLE, "type": "2hop", "gold_doc_ids": [["c1"], ["p1"]]}
    # REFRAG saw two blocks; [1] is the first document of the last one (ADA), not of hop 1
    row = one(two_hop, "Palmora", [[OTHER, THIRD], [ADA]], [1])
    assert (row["hops"], row["citation_precision"], row["citation_recall"]) == (2, 1.0, 1.0)
    assert row["retrieval_recall"] == 1.0
    row = one(two_hop, "Palmora", [[OTHER, THIRD], [ADA]], [2])  # past the last block's end
    assert row["citation_precision"] == 0.0


@pytest.mark.parametrize("text, abstains", [
    ("The sources do not say.", True), ("The sources do not say", True), ("the sources do not say.", True),
    (" THE SOURCES DO NOT SAY! ", True), ("The sources say nothing.", False), ("Vessa", False),
    ("The sources do not say. Vessa", False)])
def test_abstention_phrasings_under_squad_normalization(text, abstains):
    assert is_abstain(text) is abstains
    row = one(SINGLE, text)
    assert row["abstained"] == float(abstains)
    assert row["hallucinated"] == float(not abstains)  # closed-book, and none of these is the gold "Palmora"


def test_aggregate_means_leave_undefined_scores_out_and_count_the_rest():
    qs = [SINGLE, SINGLE, SINGLE, UNANSWERABLE]
    preds = [{"prediction": "Palmora", "citations": [2], "documents": [[OTHER, ADA]]},
             {"prediction": "Kiko", "citations": [1, 7], "documents": [[OTHER, ADA]]},
             {"prediction": "Vessa", "citations": [], "documents": []},
             {"prediction": ABSTAIN, "citations": [], "documents": [[ADA]]}]
    agg = aggregate(score(qs, preds))
    assert agg["n"] == 4
    assert agg["em"] == 0.5 and agg["hallucinated"] == 0.5 and agg["abstained"] == 0.25
    # precision over the two answers that cite: (1 + 0/2) / 2; recall over the two with p1 in a
    # block and an answerable question: (1 + 0) / 2
    assert (agg["citation_precision"], agg["citation_precision_n"]) == (0.5, 2)
    assert (agg["citation_recall"], agg["citation_recall_n"]) == (0.5, 2)
    assert agg["mean_hops"] == (1 + 1 + 0 + 1) / 4
    # EM 2/4, Wilson with z = 1.96: center (0.5 + 0.4802) / 1.9604 = 0.5, half 1.96 sqrt(0.0625 + 0.060025) / 1.9604
    assert agg["em_lo"] == pytest.approx(0.1500, abs=1e-4) and agg["em_hi"] == pytest.approx(0.8500, abs=1e-4)


def _agg(n, em, hallucinated, **more):
    return {"n": n, "em": em, "em_lo": None, "em_hi": None, "hallucinated": hallucinated, **more}


RESULTS = {
    "mid": {"closed_book": {"single": _agg(10, 0.0, 1.0)}},
    "rag": {
        "closed_book": {"single": _agg(100, 0.0, 0.9), "2hop": _agg(50, 0.0, 0.8), "unanswerable": _agg(50, 0.0, 1.0),
                        "known_single": _agg(40, 0.5, 0.5), "counterfactual": _agg(20, 0.0, 1.0)},
        "rag": {"single": _agg(100, 0.6, 0.3), "2hop": _agg(50, 0.1, 0.6), "unanswerable": _agg(50, 0.9, 0.1),
                "known_single": _agg(40, 0.6, 0.4), "counterfactual": _agg(20, 0.5, 0.5, abstained=0.1)},
    },
}


def test_headline_pools_the_held_out_types_and_keeps_the_old_keys():
    assert set(HELD_OUT) == {"single", "2hop", "3hop", "unanswerable"}
    h = headline(RESULTS)
    closed = (100 * 0.9 + 50 * 0.8 + 50 * 1.0) / 200  # known_single and counterfactual left out
    rag = (100 * 0.3 + 50 * 0.6 + 50 * 0.1) / 200
    assert h["closed_book_hallucination_heldout"] == pytest.approx(closed)
    assert h["rag_hallucination_heldout"] == pytest.approx(rag)
    assert h["rag_over_closed_book_hallucination_heldout"] == pytest.approx(rag / closed)
    assert h["rag_em_single_test"] == 0.6 and h["closed_book_em_known_single"] == 0.5
    for key in ("closed_book_em_single_test", "rag_em_2hop", "refrag_em_2hop", "refrag_em_3hop", "refrag_sft_em_2hop",
                "rag_abstention_unanswerable", "rag_em_counterfactual"):
        assert key in h
    # issue 11's bars read the final checkpoint's REFRAG single-hop EM and abstention beside its RAG mode's
    final = {**RESULTS, "refrag": {"rag": {"single": _agg(30, 0.7, 0.2)},
                                   "refrag": {"single": _agg(30, 0.65, 0.2), "unanswerable": _agg(10, 0.5, 0.2, abstained=0.8)}}}
    hf = headline(final)
    assert (hf["refrag_em_single"], hf["refrag_abstention_unanswerable"]) == (0.65, 0.8)
    assert len(hf) == 14  # the README's "14 headline numbers"
    assert hf["rag_em_single_test"] == 0.6  # still the rag checkpoint's, not the final one's RAG mode
    assert heldout_rate(RESULTS, "refrag", "rag") is None
    # no rag checkpoint, or a closed-book rate of 0: no ratio
    assert headline({"mid": RESULTS["mid"]})["rag_over_closed_book_hallucination_heldout"] is None
    zero = {"rag": {"closed_book": {"single": _agg(10, 1.0, 0.0)}, "rag": {"single": _agg(10, 1.0, 0.0)}}}
    assert headline(zero)["rag_over_closed_book_hallucination_heldout"] is None


def test_report_shows_em_with_its_interval_and_the_headline_sentence(tmp_path):
    results = {"rag": {
        "closed_book": {"single": {"n": 150, "em": 0.0, "em_lo": 0.0, "em_hi": 0.02497, "hallucinated": 0.8,
                                   "citation_precision": None, "citation_precision_n": 0}},
        "rag": {"single": {"n": 150, "em": 85 / 150, "em_lo": 0.48668, "em_hi": 0.64333, "hallucinated": 0.4,
                           "citation_precision": 0.9, "citation_precision_n": 120, "latency_s": 0.0123}}}}
    h = {"rag_hallucination_heldout": 0.4, "closed_book_hallucination_heldout": 0.8,
         "rag_over_closed_book_hallucination_heldout": 0.5, "rag_em_2hop": None}
    path = tmp_path / "report.md"
    markdown_report(results, h, path, ("single", "2hop", "3hop", "unanswerable"))
    text = path.read_text()
    assert "| rag | rag | 150 | 0.567 [0.49, 0.64] |" in text
    assert "| rag | closed_book | 150 | 0.000 [0.00, 0.02] |" in text
    assert "0.900 (120)" in text and "— (0)" in text  # citation precision and the answers it is over
    assert "batched" in text and "0.012" in text
    lines = text.splitlines()
    top = next(line for line in lines if line.strip() and not line.startswith("#"))  # the first sentence
    assert "RAG 0.400 (n=150) against closed-book 0.800 (n=150)" in top
    assert "0.50× as often as closed-book (50% less)" in top
    assert "single, 2hop, 3hop, unanswerable" in top
    assert "- rag_em_2hop: n/a" in text


def test_hallucination_plot_writes_one_row_per_checkpoint(tmp_path):
    rates = {"mid": {"closed_book": 0.9, "rag": 0.7, "refrag": None}, "rag": {"closed_book": 0.8, "rag": 0.4, "refrag": 0.5}}
    hallucination_plot(rates, tmp_path / "h.csv", tmp_path / "h.png")
    with open(tmp_path / "h.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"checkpoint": "mid", "closed_book": "0.9", "rag": "0.7", "refrag": ""},
                    {"checkpoint": "rag", "closed_book": "0.8", "rag": "0.4", "refrag": "0.5"}]
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multi_hop_answers_are_split_by_where_the_final_document_was_shown(tmp_path):
    """Where REFRAG fails: the final hop's gold document (c2) shown after a follow-up, already in hop 1's
    block (read back), or never (with and without a follow-up search); n and EM per group, and the share
    whose follow-ups named the bridge (Kiko, any case or punctuation): a search failure vs a reading one."""
    from nanochat_core.evaluation import where_final_doc
    q = {"id": "m", "type": "2hop", "question": "In which country is Ada Lovi's birthplace?", "answers": ["Vessa"],
         "gold_doc_ids": [["p1"], ["c2"]], "hops": [{"query": "Ada Lovi", "doc_id": "p1", "answer": "Kiko"},
                                                    {"query": "Kiko", "doc_id": "c2", "answer": "Vessa"}]}

    def ans(pred, *blocks, queries=("kiko.",)):
        return {"prediction": pred, "citations": [], "documents": [list(b) for b in blocks],
                "queries": [q["question"], *queries[:len(blocks) - 1]]}
    preds = [ans("Vessa", [ADA], [THIRD]), ans("Kiko", [ADA], [OTHER, THIRD], queries=("Ada Lovi Kiko",)),  # after a search: 2
             ans("Vessa", [ADA, THIRD], [OTHER]), ans("Kiko", [ADA, THIRD], [OTHER], queries=("Palmora",)),
             ans("x", [THIRD, ADA]),  # read back: 3, one named the bridge
             ans("Vessa", [ADA], [OTHER], queries=("Kika",)), ans("Palmora", [ADA])]  # never: 2, one without a follow-up
    got = where_final_doc([q] * len(preds), preds)
    assert got == {"search": {"n": 2, "em": 0.5, "named": 0.5}, "hop1": {"n": 3, "em": pytest.approx(1 / 3),
                                                                         "named": pytest.approx(1 / 3)},
                   "never": {"n": 2, "em": 0.5, "no_search": 0.5, "named": 0.0}}
    assert where_final_doc([], [])["never"] == {"n": 0, "em": None, "no_search": None, "named": None}
    no_hops = {k: v for k, v in q.items() if k != "hops"}  # a QA source's question without a gold chain
    assert where_final_doc([no_hops], [preds[0]])["search"] == {"n": 1, "em": 1.0, "named": None}
    path = tmp_path / "report.md"
    markdown_report({}, {}, path, HELD_OUT, {"refrag": {"2hop": got}})
    text = path.read_text()
    assert "## Where REFRAG's multi-hop answers fail" in text
    assert "| refrag | 2hop | 2, 0.500, 0.500 | 3, 0.333, 0.333 | 2, 0.500, 0.000 | 0.500 |" in text


def test_em_by_relation_splits_a_type_by_its_chains_and_the_report_shows_them(tmp_path):
    """EM per relation chain adds back up to the type's n and EM, and report.md gets one row per
    (type, chain) with a column per checkpoint x mode that reads documents (closed-book left out)."""
    from nanochat_core.evaluation import em_by_relation
    qs = [{"relation": "company.founded_by.born_in", "answers": ["Kiko"]},
          {"relation": "company.founded_by.born_in", "answers": ["Vessa"]},
          {"relation": "person.born_in.located_in", "answers": ["Palmora"]}, {"answers": ["Ada"]}]
    rows = [{"em": 1.0}, {"em": 0.0}, {"em": 1.0}, {"em": 1.0}]  # score()'s rows: Kiko right, Vessa wrong, ...
    got = em_by_relation(qs, rows)
    assert got == {"": {"n": 1, "em": 1.0}, "company.founded_by.born_in": {"n": 2, "em": 0.5},
                   "person.born_in.located_in": {"n": 1, "em": 1.0}}
    assert sum(r["n"] for r in got.values()) == len(qs)
    assert sum(r["em"] * r["n"] for r in got.values()) == 3
    by_relation = {"refrag": {"closed_book": {"2hop": got}, "refrag": {"2hop": got}},
                   "rag": {"rag": {"2hop": {"company.founded_by.born_in": {"n": 2, "em": 0.0}}}}}
    path = tmp_path / "report.md"
    markdown_report({}, {}, path, HELD_OUT, None, by_relation)
    text = path.read_text()
    assert "| type | relation | n | refrag refrag | rag rag |" in text
    assert "| 2hop | company.founded_by.born_in | 2 | 0.500 | 0.000 |" in text
    assert "| 2hop | person.born_in.located_in | 1 | 1.000 |  |" in text
