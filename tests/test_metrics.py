"""Retrieval metrics (trec_eval definitions), SQuAD EM/F1 and the Wilson interval, each against
hand-computed values."""
import math

import pytest

from nanochat_core.metrics import (
    evaluate_run,
    exact_match,
    f1,
    mrr_at_k,
    ndcg_at_k,
    normalize_answer,
    precision_at_k,
    recall_at_k,
    wilson_interval,
)

# d2 (grade 2) at rank 2, d4 (grade 1) at rank 4, d9 (grade 1) never retrieved, d3 judged non-relevant.
RANKED = ["d1", "d2", "d3", "d4", "d5"]
QRELS = {"d2": 2, "d4": 1, "d9": 1, "d3": 0}


def test_recall():
    assert recall_at_k(RANKED, QRELS, 1) == 0.0
    assert recall_at_k(RANKED, QRELS, 3) == pytest.approx(1 / 3)
    assert recall_at_k(RANKED, QRELS, 5) == pytest.approx(2 / 3)
    assert recall_at_k(RANKED, {"x": 0}, 5) == 0.0  # no relevant docs


def test_precision_divides_by_k_even_for_short_lists():
    assert precision_at_k(RANKED, QRELS, 3) == pytest.approx(1 / 3)
    assert precision_at_k(RANKED, QRELS, 5) == pytest.approx(2 / 5)
    assert precision_at_k(RANKED, QRELS, 10) == pytest.approx(2 / 10)


def test_mrr():
    assert mrr_at_k(RANKED, QRELS, 1) == 0.0
    assert mrr_at_k(RANKED, QRELS, 10) == 0.5
    assert mrr_at_k(["d4", "d2"], QRELS, 10) == 1.0
    assert mrr_at_k(["d3", "d1"], QRELS, 10) == 0.0  # grade 0 is not relevant


def test_ndcg_graded_linear_gain():
    # DCG@5 = 2/log2(3) + 1/log2(5) = 1.26186 + 0.43068 = 1.69254
    # IDCG@5 (grades 2,1,1) = 2/log2(2) + 1/log2(3) + 1/log2(4) = 2 + 0.63093 + 0.5 = 3.13093
    assert ndcg_at_k(RANKED, QRELS, 5) == pytest.approx(1.69254 / 3.13093, abs=1e-5)
    assert ndcg_at_k(RANKED, QRELS, 5) == pytest.approx(0.54059, abs=1e-5)
    # @2: DCG = 1.26186; IDCG = 2 + 0.63093
    assert ndcg_at_k(RANKED, QRELS, 2) == pytest.approx(1.26186 / 2.63093, abs=1e-5)
    assert ndcg_at_k(RANKED, QRELS, 1) == 0.0
    assert ndcg_at_k(["d2", "d4", "d9"], QRELS, 10) == pytest.approx(1.0)
    # swapping grades 2 and 1 at the top costs: (1 + 2/log2 3) / (2 + 1/log2 3)
    assert ndcg_at_k(["d4", "d2"], {"d2": 2, "d4": 1}, 2) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert ndcg_at_k(RANKED, {}, 10) == 0.0


def test_evaluate_run_means_over_judged_queries():
    qrels = {"q1": QRELS, "q2": {"a": 1}, "q3": {"b": 1}, "q_none": {"z": 0}}
    run = {"q1": RANKED, "q2": ["a"]}  # q3 missing from the run: it scores 0, q_none is not counted
    out = evaluate_run(run, qrels, metrics=("mrr@10", "recall@100", "ndcg@10"))
    assert out["num_queries"] == 3
    assert out["mrr@10"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert out["recall@100"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert out["ndcg@10"] == pytest.approx((0.54059 + 1 + 0) / 3, abs=1e-5)


def test_normalize_answer_squad():
    assert normalize_answer("The  Cat's hat!") == "cats hat"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("theory") == "theory"  # articles only as whole words


def test_exact_match_max_over_golds():
    assert exact_match("the Eiffel Tower.", ["x", "Eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert exact_match("Paris", "paris") == 1.0  # a single gold string


def test_f1_token_overlap():
    # pred [cat, sat], gold [cat, sat, on, mat]: P = 1, R = 1/2, F1 = 2/3
    assert f1("the cat sat", "cat sat on the mat") == pytest.approx(2 / 3)
    # repeated tokens count once each: common = min counts = 1 x + 1 y; P = R = 2/3
    assert f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1("the cat sat", ["dog", "cat sat on the mat", "cat sat"]) == 1.0  # max over golds
    assert f1("dog", ["cat"]) == 0.0


def test_unanswerable_squad_v2():
    assert exact_match("", []) == 1.0 and f1("", []) == 1.0  # abstaining on an unanswerable question
    assert f1("Paris", []) == 0.0 and exact_match("Paris", []) == 0.0
    assert f1("", ["Paris"]) == 0.0
    assert f1("the", ["a"]) == 1.0  # both normalize to empty


def test_squad_normalization_in_em_and_f1():
    assert exact_match("  the PALMORA!! ", ["Palmora"]) == 1.0  # case, articles, punctuation, spaces
    assert exact_match("Palmora and Vessa", ["Palmora"]) == 0.0  # the gold inside a longer answer
    # pred [palmora, and, vessa], gold [palmora]: P = 1/3, R = 1, F1 = 2 * (1/3) / (4/3) = 1/2
    assert f1("Palmora and Vessa", ["Palmora"]) == pytest.approx(0.5)
    assert f1("Palmora, Vessa", ["Vessa, Palmora"]) == 1.0  # bag of tokens: order does not matter


def test_wilson_interval():
    # 8/10: p = 0.8, z^2 = 3.8416; center (0.8 + 0.19208) / 1.38416 = 0.71675,
    # half 1.96 * sqrt(0.016 + 0.009604) / 1.38416 = 0.22658
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    # 0/n: the lower bound is 0 and the upper z^2 / (n + z^2), not a zero-width interval
    assert wilson_interval(0, 150) == (0.0, pytest.approx(3.8416 / 153.8416))
    assert wilson_interval(150, 150) == (pytest.approx(150 / 153.8416), 1.0)
    # symmetric in successes and failures
    lo2, hi2 = wilson_interval(2, 10)
    assert (lo2, hi2) == (pytest.approx(1 - hi), pytest.approx(1 - lo))
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no answers: no information
    # a wider z gives a wider interval
    assert wilson_interval(8, 10, z=2.576)[0] < lo
