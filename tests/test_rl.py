"""REFRAG's RL: the reward table (adversarial cases included), group advantages, zero
gradient on tokens the model did not sample, and a toy reward that RL learns."""
import collections
import random

import pytest
import torch

from nanochat_core.data.world import ABSTAIN
from nanochat_core.model import GPT, GPTConfig
from nanochat_core.rl import group_advantages, policy_loss, question_sampler, reward

W = {"em": 1.0, "citation": 0.2, "unsupported": 0.3, "wrong": 0.0, "format": 0.5, "retrieval": 0.0}
Q = {"type": "2hop", "question": "In which country was Ada Lovi born?", "answers": ["Kikoland"]}
UNANS = {"type": "unanswerable", "question": "When was Ada Lovi born?", "answers": [ABSTAIN]}
HOP1 = [{"id": "p1", "title": "Ada Lovi", "text": "Ada Lovi was born in Kiko."}]
HOP2 = [{"id": "c1", "title": "Kiko", "text": "Kiko is a city in Kikoland."},
        {"id": "c2", "title": "Miles", "text": "Miles is a city in Bororia."}]


# train_rl's section for the tests that run it with stubbed rollouts and val
RL_P = {"matrix_lr": 0.02, "embedding_lr": 0.2, "unembedding_lr": 0.004, "scalar_lr": 0.004, "k": 3,
        "retriever": "bm25", "max_hops": 2, "log_every": 10, "rl_steps": 2, "rl_seed": 0, "rl_group_size": 2,
        "rl_questions_per_step": 4, "rl_temperature": 1.0, "rl_lr_frac": 0.05, "rl_eval_every": 10,
        "rl_max_new_tokens": 4, "rl_drill_frac": 0.0, "rl_reward_citation": 0.2, "rl_penalty_unsupported": 0.3,
        "rl_penalty_wrong": 0.0, "rl_penalty_format": 0.5, "rl_reward_retrieval": 0.0, "rl_copy_guard": False,
        "rl_ema": 0.0, "rl_rows_per_pass": 8, "rl_swap_frac": 0.0,
        "rl_balance_relations": False, "rl_hop1_frac": 0.0}


class _Tok:  # what train_rl asks of a tokenizer
    def get_bos_token_id(self):
        return 0

    def encode(self, s):
        return [1]

    def encode_special(self, s):
        return 5


def _r(pred, cites=(), queries=("Kiko",), docs=(HOP1, HOP2), finished=True, q=Q):
    return {"prediction": pred, "citations": list(cites), "documents": list(docs),
            "queries": [q["question"], *queries], "finished": finished}


@pytest.mark.parametrize("name, q, r, want", [
    ("right, cited", Q, _r("Kikoland", [1]), 1.2),
    ("right, normalized", Q, _r("the kikoland.", [1]), 1.2),
    ("right, uncited", Q, _r("Kikoland"), 1.0),
    ("right, cites a document without the answer", Q, _r("Kikoland", [2]), 1.0),
    ("right, cites a source that does not exist", Q, _r("Kikoland", [1, 7]), 1.0),
    ("answer inside a longer wrong answer", Q, _r("Kikoland and Bororia", [1]), -0.3),
    ("wrong but shown", Q, _r("Bororia", [2]), 0.0),
    ("made up", Q, _r("Zuzuland", [1]), -0.3),
    ("abstains on an answerable question", Q, _r(ABSTAIN), 0.0),
    ("abstains on an unanswerable one", UNANS, _r(ABSTAIN, q=UNANS, queries=()), 1.0),
    ("abstention phrasing: case and period", UNANS, _r("the sources do not say", q=UNANS, queries=()), 1.0),
    ("abstention phrasing: another wording", UNANS, _r("The sources don't say.", q=UNANS, queries=()), -0.3),
    ("answers an unanswerable one", UNANS, _r("Kiko", [1], q=UNANS, queries=()), 0.0),
    ("no answer", Q, _r(""), -0.5),
    ("ran out of tokens", Q, _r("Kikoland", [1], finished=False), 0.7),
    ("empty query", Q, _r("Kikoland", [1], queries=("",), docs=(HOP1, [])), 1.0 - 0.3 - 0.5),  # EM; unsupported; format fault
    ("repeated query", Q, _r("Kikoland", [1], queries=("Kiko", "kiko")), 0.7),
    ("repeats the question", Q, _r("Kikoland", [1], queries=(Q["question"],)), 0.7),
])
def test_reward_table(name, q, r, want):
    assert reward(q, r, W)["reward"] == pytest.approx(want), name


@pytest.mark.parametrize("name, q, r, want", [
    ("right", Q, _r("Kikoland", [1]), 1.2),
    ("wrong but shown", Q, _r("Bororia", [2]), -0.25),
    ("made up: wrong and unsupported", Q, _r("Zuzuland", [1]), -0.55),
    ("abstains on an answerable question", Q, _r(ABSTAIN), 0.0),
    ("answers an unanswerable one", UNANS, _r("Kiko", [1], q=UNANS, queries=()), -0.25),
    ("abstains on an unanswerable one", UNANS, _r(ABSTAIN, q=UNANS, queries=()), 1.0),
    ("no answer: a format fault, not a wrong answer", Q, _r(""), -0.5),
])
def test_wrong_answer_penalty_puts_guessing_below_abstaining(name, q, r, want):
    """rl_penalty_wrong: a wrong answer (not an abstention) scores -w, so abstaining (0) beats a
    guess whose chance of being right is below w / (1 + w)."""
    assert reward(q, r, {**W, "wrong": 0.25})["reward"] == pytest.approx(want), name


def test_group_advantages_sum_to_zero_per_group_and_are_not_std_scaled():
    adv = group_advantages([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5], 4)
    assert adv.view(2, 4).sum(1).abs().max() < 1e-6
    assert adv.tolist()[:4] == pytest.approx([0.75, -0.25, -0.25, -0.25])  # not divided by the std
    assert adv.tolist()[4:] == [0.0] * 4  # a flat group teaches nothing
    # exactly nothing, even where float32 rounding of reward - mean would leave ~1e-8
    assert group_advantages([1.2] * 8 + [0.7] * 7 + [-0.3], 8).tolist()[:8] == [0.0] * 8


def _model(V=40):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, n_layer=2, n_embd=32, n_head=2, n_kv_head=2, block_pattern="TM",
                         headdim=16, sequence_len=64))


def test_forced_and_prompt_tokens_get_exactly_zero_gradient():
    """The loss must not depend on a token's own probability unless the model sampled it:
    d loss / d logits is exactly zero at prompt, forced (retrieved) and padding positions."""
    model = _model()
    rows = [{"prompt": [1, 2, 3], "tokens": [4, 5, 6, 7, 8], "masks": [1, 0, 0, 1, 1]},
            {"prompt": [1, 9], "tokens": [10, 11], "masks": [0, 1]}]
    grabbed = {}
    orig = model.forward

    def forward(x, *a, **k):
        out = orig(x, *a, **k)
        out.retain_grad()
        grabbed["logits"] = out
        return out
    model.forward = forward
    loss, _ = policy_loss(model, rows, torch.tensor([1.0, -0.5]), pad_id=0)
    loss.backward()
    g = grabbed["logits"].grad.abs().sum(-1)  # (B, T): position t predicts token t+1
    # row 0: seq 1 2 3 | 4 5 6 7 8; sampled targets 4, 7, 8 sit at positions 2, 5, 6
    assert [t for t in range(g.shape[1]) if g[0, t] > 0] == [2, 5, 6]
    # row 1: seq 1 9 | 10 11; only 11 (position 2) was sampled; position 3+ is padding
    assert [t for t in range(g.shape[1]) if g[1, t] > 0] == [2]


def test_policy_backward_in_sorted_passes_equals_one_pass():
    """RL's backward runs length-sorted passes of a few rows and no gradient for rows whose
    advantage is 0; the gradient, the loss and the entropy must be those of policy_loss over
    every row at once, banned search markers and copy-guard masks included."""
    from nanochat_core.rl import policy_backward
    model = _model()
    g = torch.Generator().manual_seed(3)
    rows = []
    for i in range(11):
        P, T = 2 + i % 4, 3 + (7 * i) % 9
        toks = torch.randint(6, 40, (P + T,), generator=g).tolist()
        masks = [int(j % 3 != 1) for j in range(T)]
        row = {"prompt": toks[:P], "tokens": toks[P:], "masks": masks, "limit_from": T - 2}
        if i % 2:  # the copy guard allowed a few ids, the sampled one among them
            row["allowed"] = {0: [toks[P], 7, 8]}
        rows.append(row)
    adv = torch.tensor([0.5, 0.0, -0.25, 0.0, 0.0, 1.0, -0.75, 0.0, 0.25, -0.5, 0.0])
    ref_loss, ref_ent = policy_loss(model, rows, adv, pad_id=0, temperature=0.7, banned_ids=[5])
    ref_loss.backward()
    ref = [q.grad.clone() for q in model.parameters()]
    model.zero_grad(set_to_none=True)
    loss, ent = policy_backward(model, rows, adv, pad_id=0, temperature=0.7, banned_ids=[5], rows_per_pass=3)
    assert loss == pytest.approx(ref_loss.item(), abs=1e-6) and ent == pytest.approx(ref_ent, rel=1e-5)
    for a, b in zip(ref, model.parameters()):
        assert torch.allclose(a, b.grad, atol=1e-6, rtol=1e-4)
    model.zero_grad(set_to_none=True)
    policy_backward(model, rows, torch.zeros(11), pad_id=0)  # every group flat: nothing to learn
    assert all(q.grad is None for q in model.parameters())
    # under torchrun n_tokens is every rank's count: twice this rank's halves the gradient
    n = sum(sum(r["masks"]) for r in rows)
    policy_backward(model, rows, adv, pad_id=0, n_tokens=2 * n, temperature=0.7, banned_ids=[5], rows_per_pass=4)
    for a, b in zip(ref, model.parameters()):
        assert torch.allclose(a / 2, b.grad, atol=1e-6, rtol=1e-4)


def test_rl_raises_the_probability_of_the_rewarded_continuation():
    """Toy bandit: after the prompt, continuations A or B; reward 1 for A. A few REINFORCE
    steps on sampled groups raise p(A)."""
    model = _model()
    A, B, prompt = 20, 21, [1, 2, 3]
    opts = model.setup_optimizers(0.02, 0.2, 0.02, 0.02, 0.0)

    def p_a():
        with torch.no_grad():
            logits = model(torch.tensor([prompt]))[0, -1]
            two = torch.softmax(logits[[A, B]], -1)
        return float(two[0])
    before = p_a()
    gen = torch.Generator().manual_seed(0)
    for _ in range(15):
        with torch.no_grad():
            two = torch.softmax(model(torch.tensor([prompt]))[0, -1][[A, B]], -1)
        picks = [A if torch.rand(1, generator=gen) < two[0] else B for _ in range(8)]
        rows = [{"prompt": prompt, "tokens": [t], "masks": [1]} for t in picks]
        adv = group_advantages([float(t == A) for t in picks], 8)
        loss, _ = policy_loss(model, rows, adv, pad_id=0)
        loss.backward()
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)
    assert p_a() > before + 0.2


def test_rl_keys_do_not_restart_the_warm_up():
    """Another rl_seed (or any rl_* key) must rerun RL only: the warm-up's resume key ignores
    them, while any other key of the section still starts the warm-up over."""
    import copy

    from nanochat_core.params import DEFAULTS
    from nanochat_core.stages import resume_key
    a = copy.deepcopy(DEFAULTS)
    b = copy.deepcopy(DEFAULTS)
    b["refrag_finetune"]["rl_seed"] += 1
    b["refrag_finetune"]["rl_steps"] += 5
    c = copy.deepcopy(DEFAULTS)
    c["refrag_finetune"]["steps"] += 1
    key = lambda p: resume_key(p, ["refrag_finetune"], "parent")
    assert key(a) == key(b)
    assert key(a) != key(c)


def test_balanced_sampler_keeps_type_shares_and_draws_each_relation_of_a_type_equally():
    """A pool of 2-hop questions, 90 of relation a and 10 of b, and 100 unanswerable ones of c:
    balanced draws keep the types half and half but give a and b a quarter each; unbalanced
    draws are exactly the old uniform ones (the same rng calls), so existing runs reproduce."""
    qs = ([{"id": f"a{i}", "type": "2hop", "relation": "a"} for i in range(90)]
          + [{"id": f"b{i}", "type": "2hop", "relation": "b"} for i in range(10)]
          + [{"id": f"c{i}", "type": "unanswerable", "relation": "c"} for i in range(100)])
    draw = question_sampler(qs, True, random.Random(0))
    n = 20000
    got = collections.Counter(draw()["relation"] for _ in range(n))
    assert got["c"] / n == pytest.approx(0.5, abs=0.02)
    assert got["a"] / n == pytest.approx(0.25, abs=0.02) and got["b"] / n == pytest.approx(0.25, abs=0.02)
    assert len({q["id"] for q in (draw() for _ in range(2000)) if q["relation"] == "b"}) == 10  # every b question drawn
    old, rng = random.Random(1), random.Random(1)
    plain = question_sampler(qs, False, rng)
    assert [plain()["id"] for _ in range(50)] == [qs[old.randrange(len(qs))]["id"] for _ in range(50)]


def test_focus_share_of_draws_comes_from_the_focus_questions_and_zero_leaves_the_plain_draws():
    """rl_hop1_frac's sampler: at 0.5, half the draws come from the focus list (plus the plain
    draws' own share of it); at 0 the draws are the plain ones, rng call for rng call."""
    qs = [{"id": f"q{i}", "type": "2hop", "relation": "a"} for i in range(100)]
    focus = qs[:10]
    draw = question_sampler(qs, False, random.Random(0), focus, 0.5)
    n = 20000
    share = sum(draw()["id"] in {q["id"] for q in focus} for _ in range(n)) / n
    assert share == pytest.approx(0.5 + 0.5 * 0.1, abs=0.02)
    old, rng = random.Random(3), random.Random(3)
    plain = question_sampler(qs, False, rng, focus, 0.0)
    assert [plain()["id"] for _ in range(50)] == [qs[old.randrange(len(qs))]["id"] for _ in range(50)]


def test_rl_hop1_frac_draws_only_multi_hop_questions_with_the_answer_in_hop_1(monkeypatch, tmp_path):
    """At rl_hop1_frac 1.0 every rolled-out question is a 2-hop/3-hop one answer_in_hop1 names (a
    single question it names is not one); with none such, RL refuses and names the key."""
    from nanochat_core import rl
    seen = []

    def rollouts(model, tok, qs, kb, *a, **k):
        seen.extend(q["id"] for q in qs)
        return [{"prompt": [1, 2], "tokens": [3, 4], "masks": [1, 1], "finished": True, "queries": [q["question"]],
                 "documents": [[]], "citations": [], "prediction": "x", "raw": "x"} for q in qs]

    monkeypatch.setattr(rl, "refrag_rollouts", rollouts)
    monkeypatch.setattr(rl, "val_em", lambda *a, **k: {"all": 0.0})
    qs = ([{**Q, "id": f"m{i}", "type": "2hop"} for i in range(6)]
          + [{**Q, "id": f"s{i}", "type": "single"} for i in range(6)])
    monkeypatch.setattr(rl, "answer_in_hop1", lambda questions, *a: {"m1", "m4", "s0", "s2"})
    rl.train_rl(_model(), _Tok(), qs, qs, "KB", {**RL_P, "rl_hop1_frac": 1.0}, tmp_path / "rl", {})
    assert seen and set(seen) <= {"m1", "m4"}
    monkeypatch.setattr(rl, "answer_in_hop1", lambda questions, *a: {"s0"})
    with pytest.raises(ValueError, match="rl_hop1_frac"):
        rl.train_rl(_model(), _Tok(), qs, qs, "KB", {**RL_P, "rl_hop1_frac": 1.0}, tmp_path / "rl2", {})


def test_retrieval_reward_needs_every_gold_document_shown():
    """rl_reward_retrieval pays for searches that found the whole chain, right answer or not."""
    w = {**W, "retrieval": 0.4}
    q = {**Q, "gold_doc_ids": [["p1"], ["c1"]]}
    assert reward(q, _r("Bororia", [2]), w)["reward"] == pytest.approx(0.4)  # wrong answer, chain found
    assert reward(q, _r("Kikoland", [1]), w)["reward"] == pytest.approx(1.6)
    missed = _r("Bororia", [1], docs=(HOP1, HOP2[1:]))  # the search never brought c1
    assert reward(q, missed, w)["retrieval"] == 0.0
    assert reward(Q, _r("Kikoland", [1]), w)["retrieval"] == 0.0  # no gold ids: nothing to find


def test_rl_draws_its_drill_share_and_rolls_each_question_out_over_its_own_kb(monkeypatch, tmp_path):
    """With rl_drill_frac 0.5, half of each step's questions come from the drill pool and are
    rolled out over the drill KB; rewards stay aligned with their rollouts."""
    from nanochat_core import rl
    calls = []

    def rollouts(model, tok, qs, kb, *a, **k):
        calls.append((kb, [q["id"] for q in qs], k["seed"]))
        return [{"prompt": [1, 2], "tokens": [3, 4], "masks": [1, 1], "finished": True, "queries": [q["question"]],
                 "documents": [[]], "citations": [], "prediction": q["answers"][0] if q["id"].endswith("0") else "x",
                 "raw": "x"} for q in qs]

    monkeypatch.setattr(rl, "refrag_rollouts", rollouts)
    monkeypatch.setattr(rl, "val_em", lambda *a, **k: {"all": 0.0})
    real = [{**Q, "id": f"r{i}"} for i in range(5)]
    drill = [{**Q, "id": f"d{i}"} for i in range(5)]
    p = {**RL_P, "rl_drill_frac": 0.5, "rl_rows_per_pass": 3}  # passes of 3 rows cut groups of 2
    out = rl.train_rl(_model(), _Tok(), real, real, "KB", p, tmp_path / "rl", {}, drills=(drill, "DKB"))
    assert [(kb, len(ids)) for kb, ids, _ in calls] == [("KB", 3), ("KB", 1), ("DKB", 3), ("DKB", 1)] * 2
    for s in (0, 2, 4, 6):  # per step and KB, the passes hold two whole groups of 2, in order
        (kb, a, _), (_, b, _) = calls[s], calls[s + 1]
        ids = a + b
        assert ids[0::2] == ids[1::2] and all(i.startswith("r" if kb == "KB" else "d") for i in ids)
    assert len({seed for _, _, seed in calls}) == len(calls)  # every pass samples with its own seed
    assert len(out["history"]) == 3


def test_headroom_counts_greedy_samples_and_grounded_passes(monkeypatch):
    """q1: greedy wrong, one of 4 samples right with the chain shown (a grounded pass);
    q2: greedy right, one sample right but its blocks missed c1 (a lucky guess: pass, not grounded)."""
    from nanochat_core import rl
    q1 = {**Q, "id": "q1", "gold_doc_ids": [["p1"], ["c1"]]}
    q2 = {**Q, "id": "q2", "type": "3hop", "gold_doc_ids": [["p1"], ["c1"]]}
    script = {  # (temperature > 0, question id) -> predictions, and whether c1 was shown
        (False, "q1"): [("Bororia", True)], (False, "q2"): [("Kikoland", True)],
        (True, "q1"): [("x", True), ("Kikoland", True), ("y", False), ("", True)],
        (True, "q2"): [("Kikoland", False), ("z", True), ("z", True), ("z", True)]}

    def rollouts(model, tok, qs, kb, *a, temperature=0.0, seed=0, copy=False):
        seen, out = {}, []
        for q in qs:
            i = seen[q["id"]] = seen.get(q["id"], -1) + 1
            pred, found = script[(temperature > 0, q["id"])][i]
            out.append({"prediction": pred, "documents": [HOP1, HOP2 if found else HOP2[1:]]})
        return out
    monkeypatch.setattr(rl, "refrag_rollouts", rollouts)
    p = {"k": 3, "retriever": "bm25", "max_hops": 2, "max_new_tokens": 4}
    got = rl.headroom(_model(), None, [q1, q2], None, p, group_size=4, temperature=1.0)
    assert got["2hop"] == {"n": 1, "greedy": 0.0, "sample_mean": 0.25, "pass_at_g": 1.0, "grounded_pass_at_g": 1.0}
    assert got["3hop"] == {"n": 1, "greedy": 1.0, "sample_mean": 0.25, "pass_at_g": 1.0, "grounded_pass_at_g": 0.0}
    # rows by another key come from the same rollouts (one pass, the same batches and seeds)
    by = rl.headroom(_model(), None, [q1, q2], None, p, group_size=4, temperature=1.0, key=lambda q: q["id"])
    assert by == {"q1": got["2hop"], "q2": got["3hop"]}


def test_rollouts_are_on_policy_the_training_forward_picks_every_token_the_decoder_picked():
    """RL scores its rollouts with one padded forward pass (rl.policy_logprobs), while the engine
    made them token by token from a left-padded, cached batch with documents blocks forced in and,
    at the hop limit, the search markers masked out. The two must be the same policy: at every
    token the model sampled, greedy decoding's choice is the training forward's argmax too (up to
    float noise), over prompts of different lengths. The model here wants to search after every
    block, so without the hop limit's mask the forward would pick <|search_start|> instead."""
    from fakes import BiasedGPT, distinct_city, tiny_config, tiny_world

    from nanochat_core.engine import LIMIT_MASKED
    from nanochat_core.inference import refrag_rollouts
    from nanochat_core.rl import policy_logprobs
    world, kb, tok, qs = tiny_world(3, 4, 4)
    sp = tok.encode_special
    chain = [sp("<|search_start|>")] + tok.encode(" " + distinct_city(world, tok)) + [sp("<|search_end|>")]
    after = {a: b for a, b in zip(chain, chain[1:])}
    after[sp("<|assistant_start|>")] = chain[0]
    after[sp("<|documents_end|>")] = chain[0]
    banned = [sp(t) for t in LIMIT_MASKED]
    torch.manual_seed(0)
    model = BiasedGPT(tiny_config(tok), after=after).eval()
    rows = refrag_rollouts(model, tok, qs, kb, k=2, max_hops=2, max_new_tokens=6)
    assert len({len(r["prompt"]) for r in rows}) > 1  # left padding was exercised
    assert all(0 in r["masks"] and r["limit_from"] < len(r["tokens"]) for r in rows)  # a forced block, then the limit
    with torch.no_grad():
        logp, chosen, keep = policy_logprobs(model, rows, tok.get_bos_token_id(), banned_ids=banned)
        assert int(keep.sum()) >= 6 * len(rows) // 2
        picked = logp.gather(1, chosen[:, None])[:, 0]
        assert torch.all(picked >= logp.max(dim=-1).values - 1e-4)
        unmasked, _, _ = policy_logprobs(model, rows, tok.get_bos_token_id())  # the limit's mask forgotten
        assert not torch.all(unmasked.gather(1, chosen[:, None])[:, 0] >= unmasked.max(dim=-1).values - 1e-4)


def test_rollouts_under_the_copy_guard_are_scored_under_the_guarded_policy():
    """With rl_copy_guard the engine samples from the guarded softmax; policy_logprobs masks the
    same ids at the same tokens (row["allowed"]), so every sampled token has a finite log-prob
    and greedy decoding's choices are the guarded forward's argmax. Forgetting the guard's masks
    scores a different policy."""
    from fakes import BiasedGPT, tiny_config, tiny_world

    from nanochat_core.engine import LIMIT_MASKED
    from nanochat_core.inference import refrag_rollouts
    from nanochat_core.rl import policy_logprobs
    world, kb, tok, qs = tiny_world(3, 4, 4)
    sp = tok.encode_special
    banned = [sp(t) for t in LIMIT_MASKED]
    torch.manual_seed(2)
    model = BiasedGPT(tiny_config(tok), always={sp("<|search_end|>"): 3.0},
                      after={sp("<|assistant_start|>"): sp("<|search_start|>")}).eval()
    greedy = refrag_rollouts(model, tok, qs, kb, k=2, max_hops=2, max_new_tokens=8, copy=True)
    sampled = refrag_rollouts(model, tok, qs * 2, kb, k=2, max_hops=2, max_new_tokens=8, copy=True,
                              temperature=1.0, seed=5)
    assert all(r["allowed"] for r in greedy + sampled)
    with torch.no_grad():
        logp, chosen, _ = policy_logprobs(model, greedy, tok.get_bos_token_id(), banned_ids=banned)
        picked = logp.gather(1, chosen[:, None])[:, 0]
        assert torch.all(picked >= logp.max(dim=-1).values - 1e-4)
        free, _, _ = policy_logprobs(model, [{**r, "allowed": {}} for r in greedy], tok.get_bos_token_id(),
                                     banned_ids=banned)
        assert not torch.all(free.gather(1, chosen[:, None])[:, 0] >= free.max(dim=-1).values - 1e-4)
        logp, chosen, _ = policy_logprobs(model, sampled, tok.get_bos_token_id(), 1.0, banned)
        assert torch.isfinite(logp.gather(1, chosen[:, None])).all()


def test_rl_ema_judges_and_keeps_the_average_while_rollouts_sample_the_live_weights(monkeypatch, tmp_path):
    """rl_ema 0.5, val every step: the weights val judges at step 1 are 0.5 x warm-up + 0.5 x the
    live step-1 weights (which step 2's rollouts sample from), and the step val picks is the one kept."""
    from nanochat_core import rl
    seen = {"rollouts": [], "val": []}
    flip = iter(range(10_000))

    def rollouts(model, tok, qs, kb, *a, **k):
        seen["rollouts"].append({n: t.clone() for n, t in model.state_dict().items()})
        return [{"prompt": [1, 2], "tokens": [3, 4], "masks": [1, 1], "finished": True, "queries": [q["question"]],
                 "documents": [[]], "citations": [], "prediction": "Kikoland" if next(flip) % 2 else "x", "raw": "x"}
                for q in qs]

    def val(model, *a, **k):
        seen["val"].append({n: t.clone() for n, t in model.state_dict().items()})
        return {"all": [0.0, 1.0, 0.5][len(seen["val"]) - 1]}

    monkeypatch.setattr(rl, "refrag_rollouts", rollouts)
    monkeypatch.setattr(rl, "val_em", val)
    qs = [{**Q, "id": f"r{i}"} for i in range(3)]
    p = {**RL_P, "rl_questions_per_step": 2, "rl_lr_frac": 1.0, "rl_eval_every": 1, "rl_ema": 0.5}
    model = _model()
    out = rl.train_rl(model, _Tok(), qs, qs, "KB", p, tmp_path / "rl", {})
    warm, live1 = seen["rollouts"][0], seen["rollouts"][1]
    name = "lm_head.weight" if "lm_head.weight" in warm else next(n for n, t in warm.items() if t.is_floating_point())
    assert not torch.equal(live1[name], warm[name])  # step 1 moved the live weights
    for n, t in warm.items():
        if t.is_floating_point():
            assert torch.allclose(seen["val"][1][n], 0.5 * t + 0.5 * live1[n], atol=1e-6), n
    assert out["rl_best_step"] == 1
    for n, t in model.state_dict().items():  # the model ends on the kept (averaged) step-1 weights
        assert torch.equal(t, seen["val"][1][n]), n


def test_rl_swap_gives_each_group_one_live_counterfactual_and_rewards_the_new_answer(monkeypatch, tmp_path):
    """rl_swap_frac 1.0: every rollout is told (old, new) for its question, one swap per group,
    new another answer of the relation, and the reward scores the new answer: copying it from
    the rewritten documents earns EM, recalling the old one does not."""
    from nanochat_core import rl
    calls = []

    def rollouts(model, tok, qs, kb, *a, swaps=None, **k):
        calls.append(list(zip([q["answers"][0] for q in qs], swaps)))
        return [{"prompt": [1, 2], "tokens": [3, 4], "masks": [1, 1], "finished": True, "queries": [q["question"]],
                 "documents": [[]], "citations": [], "prediction": (s[1] if i % 4 == 1 else s[0]) if s else q["answers"][0], "raw": "x"}
                for i, (q, s) in enumerate(zip(qs, swaps))]

    monkeypatch.setattr(rl, "refrag_rollouts", rollouts)
    monkeypatch.setattr(rl, "val_em", lambda *a, **k: {"all": 0.0})
    answers = ["Kikoland", "Bororia", "Tarunia"]
    qs = [{**Q, "id": f"r{i}", "relation": "person.born_in.in_country", "answers": [answers[i % 3]]} for i in range(6)]
    out = rl.train_rl(_model(), _Tok(), qs, qs, "KB", {**RL_P, "rl_swap_frac": 1.0}, tmp_path / "rl", {})
    rows = [r for c in calls for r in c]
    assert len(rows) == 2 * 4 * 2  # steps x questions x group
    for target, (old, new) in rows:
        assert target == new != old and old in answers and new in answers
    assert all(rows[i] == rows[i + 1] for i in range(0, len(rows), 2))  # one swap per group
    assert [h["reward_em"] for h in out["history"][1:]] == [0.25, 0.25]  # only the rows that wrote `new`, not `old`
    calls.clear()  # rl_swap_frac 0: no swaps, and the question's own answer is the right one
    out = rl.train_rl(_model(), _Tok(), qs, qs, "KB", {**RL_P, "rl_swap_frac": 0.0}, tmp_path / "rl", {})
    assert all(s is None for c in calls for _, s in c) and [h["reward_em"] for h in out["history"][1:]] == [1.0, 1.0]


def test_swapped_rollouts_show_the_new_answer_in_every_block_and_leave_other_rows_alone():
    """refrag_rollouts with swaps: hop 1's block and every follow-up block show `new` wherever
    the documents said `old` (titles included), and a row without a swap is token for token the
    row an unswapped call makes."""
    import re

    from fakes import BiasedGPT, distinct_city, tiny_config, tiny_world

    from nanochat_core.inference import refrag_rollouts
    world, kb, tok, qs = tiny_world(3, 4, 4)
    sp = tok.encode_special
    city = distinct_city(world, tok)
    chain = [sp("<|search_start|>")] + tok.encode(" " + city) + [sp("<|search_end|>")]
    after = {a: b for a, b in zip(chain, chain[1:])}
    after[sp("<|assistant_start|>")] = after[sp("<|documents_end|>")] = chain[0]  # search: a follow-up block
    torch.manual_seed(0)
    model = BiasedGPT(tiny_config(tok), after=after).eval()
    cities = [e.name for e in world.entities.values() if e.type == "city" and e.name != city]
    qs = [{**qs[0], "question": f"Who was born in {city}?"}, qs[1]]  # hop 1 shows the city too
    plain = refrag_rollouts(model, tok, qs, kb, k=2, max_hops=2, max_new_tokens=6)
    swaps = [(city, cities[0]), None]
    rows = refrag_rollouts(model, tok, qs, kb, k=2, max_hops=2, max_new_tokens=6, swaps=swaps)
    old = re.compile(rf"(?<!\w){re.escape(city)}(?!\w)")
    blocks = rows[0]["documents"]
    assert len(blocks) == 2 and all(any(cities[0] in d["text"] for d in b) for b in blocks)  # hop 1 and the search
    assert not any(old.search(f"{d['title']} {d['text']}") for b in blocks for d in b)
    for pb, sb in zip(plain[0]["documents"], blocks):  # the same documents, rewritten
        assert [d["id"] for d in pb] == [d["id"] for d in sb]
        assert [old.sub(cities[0], d["text"]) for d in pb] == [d["text"] for d in sb]
    shown_text = tok.decode(rows[0]["prompt"] + rows[0]["tokens"]).split("<|user_end|>", 1)[1]  # after the question
    assert not old.search(shown_text.replace(f"<|search_start|> {city}", "")) and cities[0] in shown_text
    assert (rows[1]["prompt"], rows[1]["tokens"], rows[1]["documents"]) == (
        plain[1]["prompt"], plain[1]["tokens"], plain[1]["documents"])
