"""REFRAG's RL phase: on-policy REINFORCE with a group-mean baseline, after the supervised
warm-up (nanochat's chat_rl, with the retriever inside every rollout).

Each step draws `questions_per_step` train questions (uniformly, or with rl_balance_relations
every relation of a type equally often; rl_hop1_frac of them from the multi-hop questions whose
hop 1 already shows the answer's document) and `group_size` REFRAG rollouts of each
at `temperature` (1.0): hop 1 is the question's top-k, then the model answers or writes a
follow-up search that the engine's tool hook runs on the live KB. A rollout's advantage is
its reward minus its group's mean reward. It is not divided by the group's standard
deviation: published search-RL runs collapse with that. The loss is -advantage x log-prob
over the tokens the model sampled itself (its follow-up queries and its answer), divided by
the number of such tokens; the prompt, the retrieved documents and padding carry no gradient.
No KL term and no ratio clipping: every step is on-policy. With rl_copy_guard the rollouts
decode under the engine's copy guard, as evaluate does, and the loss scores each token under
the same masked softmax the guard sampled it from.

Every eval_every steps the greedy REFRAG EM on the *val* questions is measured, and the best
step by it is the checkpoint this phase keeps: the test split never selects anything. With
rl_ema > 0, val judges (and the phase keeps) an exponential moving average of the weights
instead of the live ones, while rollouts still sample from the live policy: single REINFORCE
steps on a few questions move greedy answers back and forth, and the average smooths that out.
"""
import random
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nanochat_core.checkpoint import clear_checkpoints, load_checkpoint, save_checkpoint
from nanochat_core.common import gather, print0, rank_world, sharded
from nanochat_core.data.world import ABSTAIN
from nanochat_core.engine import LIMIT_MASKED
from nanochat_core.inference import answer_questions, refrag_rollouts
from nanochat_core.metrics import exact_match, is_abstain, normalize_answer, supported
from nanochat_core.rag import answer_pool, retrieve, swap_question
from nanochat_core.train import pad_batch


def reward(q, r, w):
    """The reward of rollout `r` (a refrag_rollouts row) for question `q`, and its parts.
      em           answer EM after SQuAD normalization; abstaining is the right answer (1)
                   on an unanswerable question and a wrong one (0) on any other
      citation     +w["citation"] when the answer is right and every [n] names a document of
                   the last block, one of which contains the answer
      unsupported  -w["unsupported"] when the answer (not an abstention) is in no shown document
      wrong        -w["wrong"] when the answer is wrong and not an abstention: under the copy guard
                   every answer is a shown span, so `unsupported` never fires, and without this a
                   guess never scores below abstaining; with it, abstaining pays whenever the
                   chance of being right is below w / (1 + w)
      format       -w["format"] for no answer, an unclosed answer (out of tokens), or an empty
                   or repeated search query (hop 1's query is the question itself)
      retrieval    +w["retrieval"] when the blocks held every gold document of the question
                   (its chain's, up to the missing fact on an unanswerable one): the searches
                   found what the answer needs, whatever the reader then made of it"""
    pred = r["prediction"]
    abstained = is_abstain(pred, ABSTAIN)
    em = exact_match(pred, q["answers"])  # an unanswerable question's gold answer is ABSTAIN itself
    final = r["documents"][-1] if r["documents"] else []
    cited = [final[c - 1] for c in r["citations"] if 0 < c <= len(final)]
    cite = float(bool(em and not abstained and cited and len(cited) == len(r["citations"])
                      and supported(pred, cited)))
    shown = [d for block in r["documents"] for d in block]
    unsupported = float(bool(pred) and not abstained and not supported(pred, shown))
    wrong = float(bool(pred) and not abstained and not em)
    queries = [normalize_answer(x) for x in r["queries"]]
    bad_query = any(not x for x in queries[1:]) or len(set(queries)) < len(queries)
    fmt = float(not pred or not r["finished"] or bad_query)
    found = float(chain_shown(q, r["documents"]))
    total = (w["em"] * em + w["citation"] * cite - w["unsupported"] * unsupported - w["wrong"] * wrong
             - w["format"] * fmt + w["retrieval"] * found)
    return {"reward": total, "em": em, "citation": cite, "unsupported": unsupported, "wrong": wrong, "format": fmt,
            "retrieval": found, "bad_query": float(bad_query)}


def reward_weights(p):
    """reward()'s weights from the refrag_finetune section's rl_* keys."""
    return {"em": 1.0, "citation": p["rl_reward_citation"], "unsupported": p["rl_penalty_unsupported"],
            "wrong": p["rl_penalty_wrong"], "format": p["rl_penalty_format"], "retrieval": p["rl_reward_retrieval"]}


def chain_shown(q, blocks):
    """Whether the documents blocks held every gold document of question q (False when it names none)."""
    gold = {d for hop in q.get("gold_doc_ids", []) for d in hop}
    return bool(gold) and gold <= {d["id"] for block in blocks for d in block}


def question_sampler(questions, balance, rng, focus=(), focus_frac=0.0):
    """A function drawing one of `questions` with `rng`: uniformly, or with balance a type as often
    as uniformly (by its share of the questions) but then each of that type's relations equally
    often, whatever its count. Why: the RL people's questions are mostly a few relations the
    warm-up already reads well (person.born_in.located_in), while founder chains, which it reads
    worst (world 1337 val 2-hop EM 0.12 against 0.82), are few; flat groups teach nothing.
    With focus_frac > 0, that share of the draws comes uniformly from `focus` instead (with
    focus_frac 0 the draws are the plain ones, rng call for rng call)."""
    if not balance:
        base = lambda: questions[rng.randrange(len(questions))]
    else:
        strata = {}
        for q in questions:
            strata.setdefault(q["type"], {}).setdefault(q.get("relation"), []).append(q)
        strata = {t: list(rels.values()) for t, rels in strata.items()}

        def base():
            rels = strata[questions[rng.randrange(len(questions))]["type"]]
            bucket = rels[rng.randrange(len(rels))]
            return bucket[rng.randrange(len(bucket))]
    if not focus_frac:
        return base
    focus = list(focus)
    return lambda: focus[rng.randrange(len(focus))] if rng.random() < focus_frac else base()


def answer_in_hop1(questions, kb, k, retriever):
    """Ids of the questions whose own top-k (REFRAG's hop 1, the same in every rollout) already
    holds their last hop's document (a question naming no gold document is never one). On a
    multi-hop question the follow-up search then brings only other documents, so the answer
    must be read back from hop 1's block: the case the warm-up reads worst (world 1337 val 2-hop
    0.32 against 0.82 otherwise, `python -m benchmarks.rl_headroom --by hop1`)."""
    named = [q for q in questions if q.get("gold_doc_ids")]
    hop1 = retrieve(kb, [q["question"] for q in named], k, retriever) if named else []
    return {q["id"] for q, docs in zip(named, hop1) if set(q["gold_doc_ids"][-1]) & {d["id"] for d in docs}}


def _all_sum(t):
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def group_advantages(rewards, group_size):
    """reward - its group's mean, groups being consecutive runs of group_size rollouts. A flat
    group (every reward the same) gets exactly 0: in float32 eight rewards of 1.2 minus their mean
    leave ~1e-8, a gradient of pure rounding that policy_backward would otherwise have to run."""
    r = torch.tensor(rewards, dtype=torch.float32).view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    return adv.masked_fill((r.max(1).values == r.min(1).values)[:, None], 0.0).view(-1)


def policy_logprobs(model, rows, pad_id, temperature=1.0, banned_ids=()):
    """The policy that sampled `rows` (prompt + tokens + masks + limit_from each), scored in one
    padded forward pass: (log-probs (N, V) at the N sampled tokens, those tokens (N,), keep (B, T),
    the mask of where they are). As in the engine, logits / temperature, and banned_ids (the
    search markers) get -inf from each row's limit_from on, where the engine masked them too;
    where the engine's copy guard constrained a token (row["allowed"]), every other id gets -inf."""
    x, y, _ = pad_batch([(r["prompt"] + r["tokens"], [0] * len(r["prompt"]) + r["masks"]) for r in rows], pad_id)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    keep = y != -1
    logits = model(x)[keep].float() / max(temperature, 1e-6)  # (N, V) at the sampled tokens only, softcapped
    if banned_ids:
        at = torch.zeros_like(keep)
        for b, r in enumerate(rows):  # token j of a row is the target at position len(prompt) + j - 1
            P = len(r["prompt"])
            at[b, P + r.get("limit_from", len(r["tokens"])) - 1:P + len(r["tokens"]) - 1] = True
        ban = torch.zeros(logits.shape[-1], dtype=torch.bool, device=device)
        ban[list(banned_ids)] = True
        logits = logits.masked_fill(at[keep][:, None] & ban, float("-inf"))
    if any(r.get("allowed") for r in rows):  # the copy guard's masks, at the tokens it constrained
        row_of = torch.cumsum(keep.view(-1).long(), 0).view(keep.shape) - 1  # (b, position) -> row of logits
        guard = torch.zeros_like(logits)
        for b, r in enumerate(rows):
            P = len(r["prompt"])
            for j, ids in r.get("allowed", {}).items():
                n = int(row_of[b, P + j - 1])
                guard[n] = float("-inf")
                guard[n, ids] = 0.0
        logits = logits + guard
    return F.log_softmax(logits, dim=-1), y[keep], keep


def policy_loss(model, rows, advantages, pad_id, n_tokens=None, temperature=1.0, banned_ids=()):
    """REINFORCE loss over `rows` (refrag_rollouts rows): -sum(advantage x log-prob) over the
    sampled tokens, / their count, under the policy that sampled them (policy_logprobs). Also
    returns the mean entropy of the policy at those tokens (a health metric, no gradient)."""
    logp, tokens, keep = policy_logprobs(model, rows, pad_id, temperature, banned_ids)
    tok_logp = logp.gather(1, tokens[:, None])[:, 0]  # (N,)
    adv = advantages.to(logp.device)[:, None].expand_as(keep)[keep]  # each token gets its rollout's advantage
    n = max(int(keep.sum()) if n_tokens is None else n_tokens, 1)  # n_tokens: all ranks' count under torchrun
    loss = -(adv * tok_logp).sum() / n
    with torch.no_grad():
        entropy = float(torch.special.entr(logp.exp()).sum(-1).mean()) if keep.any() else 0.0
    return loss, entropy


def policy_backward(model, rows, advantages, pad_id, n_tokens=None, temperature=1.0, banned_ids=(), rows_per_pass=8):
    """policy_loss(...).backward() over all `rows`, in passes of at most rows_per_pass rows
    (None: one pass) sorted by length, so each pass pads to its own longest row. Rows whose
    advantage is 0 (a flat group: every rollout got the same reward) add nothing to the gradient,
    so they run in passes of their own without one, for the entropy alone. The gradient is
    policy_loss's over all rows, up to float rounding. Returns (the loss, the mean entropy at every
    sampled token). Why: one pass padded to the longest of a step's rows was slower than the
    rollouts themselves on a CPU (`python -m benchmarks.rl_step`; figures in the README)."""
    adv = advantages.float()
    count = [sum(r["masks"]) for r in rows]
    n = max(sum(count) if n_tokens is None else n_tokens, 1)
    length = lambda i: len(rows[i]["prompt"]) + len(rows[i]["tokens"])
    flat = sorted((i for i in range(len(rows)) if adv[i] == 0), key=length)
    live = sorted((i for i in range(len(rows)) if adv[i] != 0), key=length)
    step = rows_per_pass or len(rows)
    loss, ent = 0.0, 0.0
    for group, grad in ((flat, False), (live, True)):
        for i in range(0, len(group), step):
            idx = group[i:i + step]
            with torch.set_grad_enabled(grad):
                part_loss, e = policy_loss(model, [rows[j] for j in idx], adv[idx], pad_id, n, temperature, banned_ids)
                if grad:
                    part_loss.backward()
            loss += part_loss.item()
            ent += e * sum(count[j] for j in idx)
    return loss, ent / max(sum(count), 1)


def val_em(model, tokenizer, questions, kb, p, mode="refrag", batch_size=32, copy=False):
    """Greedy EM in `mode` (REFRAG for RL) on `questions` (the val split), overall (RL's checkpoint
    selector) and per question type: {"all": em, "2hop": em, ...}. copy: the engine's copy guard."""
    model.eval()
    preds = sharded(lambda mine: answer_questions(model, tokenizer, mine, mode, kb, p["k"], p["retriever"],
                                                  p["max_hops"], p["max_new_tokens"], batch_size=batch_size,
                                                  copy=copy), questions)
    model.train()
    hits = {}
    for q, pr in zip(questions, preds):
        hits.setdefault(q["type"], []).append(exact_match(pr["prediction"], q["answers"]))
    out = {t: sum(h) / len(h) for t, h in sorted(hits.items())}
    out["all"] = sum(map(sum, hits.values())) / max(len(questions), 1)
    return out


def headroom(model, tokenizer, questions, kb, p, group_size, temperature, seed=0, batch_size=8, key=None, copy=False):
    """What RL could reach from `model`: per question type (or per key(question)), greedy REFRAG
    EM, the mean EM of group_size samples at `temperature`, pass@G (some sample right) and
    grounded pass@G (some sample right with every gold document shown, so not a lucky guess).
    REINFORCE only moves probability toward what its samples reach, so greedy EM near grounded
    pass@G leaves it little to find. p: k, retriever, max_hops, max_new_tokens."""
    args = (kb, p["k"], p["retriever"], p["max_hops"], p["max_new_tokens"])
    model.eval()
    per = {}
    for i in range(0, len(questions), batch_size):
        qs = questions[i:i + batch_size]
        greedy = refrag_rollouts(model, tokenizer, qs, *args, copy=copy)
        samples = refrag_rollouts(model, tokenizer, [q for q in qs for _ in range(group_size)], *args,
                                  temperature=temperature, seed=seed * 100_003 + i, copy=copy)
        for j, q in enumerate(qs):
            group = samples[j * group_size:(j + 1) * group_size]
            ems = [exact_match(r["prediction"], q["answers"]) for r in group]
            grounded = [e and chain_shown(q, r["documents"]) for e, r in zip(ems, group)]
            row = per.setdefault(key(q) if key else q["type"], {"n": 0, "greedy": 0.0, "sample_mean": 0.0,
                                                                "pass_at_g": 0.0, "grounded_pass_at_g": 0.0})
            row["n"] += 1
            row["greedy"] += exact_match(greedy[j]["prediction"], q["answers"])
            row["sample_mean"] += sum(ems) / group_size
            row["pass_at_g"] += float(any(ems))
            row["grounded_pass_at_g"] += float(any(grounded))
    return {t: {k: (v if k == "n" else v / row["n"]) for k, v in row.items()} for t, row in sorted(per.items())}


def _fmt(v):
    return f"{v['all']:.3f} (" + ", ".join(f"{t} {x:.2f}" for t, x in v.items() if t != "all") + ")"


def train_rl(model, tokenizer, train_qs, val_qs, kb, p, out_dir, meta, log=None, device="cpu", drills=None):
    """p: the refrag_finetune section (its rl_* keys and k/retriever/max_hops). Trains `model`
    in place, saves the best step by val EM to out_dir (step 0, the warm-up itself, competes
    too) and loads those weights back into `model`. Returns a summary with the history.
    drills: (questions, their KB), from which a p["rl_drill_frac"] share of each step's
    questions is drawn (the rest from train_qs over kb). A p["rl_swap_frac"] share of the
    train_qs draws gets a live counterfactual (rag.swap_question): another answer of its relation,
    written into every document its rollouts are shown, so only reading earns the reward."""
    log = log or (lambda metrics, step: None)
    w = reward_weights(p)
    rp = {**p, "max_new_tokens": p["rl_max_new_tokens"]}
    scale = p["rl_lr_frac"]
    opts = model.setup_optimizers(p["matrix_lr"] * scale, p["embedding_lr"] * scale, p["unembedding_lr"] * scale,
                                  p["scalar_lr"] * scale, 0.0)
    for o in opts:
        for g in o.param_groups:
            g["initial_lr"] = g["lr"]
    rng = random.Random(f"rl:{p['rl_seed']}")
    pad = tokenizer.get_bos_token_id()
    banned = [tokenizer.encode_special(t) for t in LIMIT_MASKED]  # as the engine masks them at the hop limit
    G, Q, total, per_pass = p["rl_group_size"], p["rl_questions_per_step"], p["rl_steps"], p["rl_rows_per_pass"]
    swap = p["rl_swap_frac"]
    pool = answer_pool(train_qs) if swap else {}  # each relation's answers: what a swap may put in
    focus = []
    if p["rl_hop1_frac"]:
        multi = [q for q in train_qs if q["type"] in ("2hop", "3hop")]
        ids = answer_in_hop1(multi, kb, p["k"], p["retriever"])
        focus = [q for q in multi if q["id"] in ids]
        if not focus:
            raise ValueError("refrag_finetune.rl_hop1_frac > 0, but no 2-hop or 3-hop RL question's own top-k shows "
                             "its answer's document (are 2hop/3hop in rl_question_types?); set it to 0")
        print0(f"[rl] {len(focus)} of {len(train_qs)} RL questions have the answer's document in hop 1: "
               f"{p['rl_hop1_frac']:.0%} of the draws come from them")
    draw = question_sampler(train_qs, p["rl_balance_relations"], rng, focus, p["rl_hop1_frac"])
    history = []
    rank, world = rank_world()

    def save(step, val):  # rank 0 writes; no rank reads the directory before it is written
        if rank == 0:
            save_checkpoint(out_dir, step, model.state_dict(), {**meta, "step": step, "rl_best_step": step,
                                                                "val_em": val}, None, keep_last=1)
        if world > 1:
            dist.barrier()
    if rank == 0:
        clear_checkpoints(out_dir)  # RL does not resume: a rerun starts again from the warm-up
    decay = p["rl_ema"]
    ema = {k: t.detach().clone() for k, t in model.state_dict().items()} if decay else None
    v = val_em(model, tokenizer, val_qs, kb, rp, copy=p["rl_copy_guard"])
    best = (v["all"], 0)
    save(0, best[0])
    history.append({"step": 0, **{("val_em" if t == "all" else f"val_em_{t}"): x for t, x in v.items()}})
    if rank == 0:
        log({("rl_val_em" if t == "all" else f"rl_val_em_{t}"): x for t, x in v.items()}, 0)
    print0(f"[rl] step 0 (the warm-up): val REFRAG EM {_fmt(v)} on {len(val_qs)} val questions")
    t0 = time.time()
    model.train()
    for step in range(1, total + 1):
        n_drill = round(Q * p["rl_drill_frac"]) if drills else 0
        qs = ([(draw(), kb) for _ in range(Q - n_drill)]  # the same draws on every rank
              + [(drills[0][rng.randrange(len(drills[0]))], drills[1]) for _ in range(n_drill)])
        # a live counterfactual: a new answer, its group's in every document shown (at 0, no draws)
        qs = [(*swap_question(q, pool, rng), s) if swap and s is kb and rng.random() < swap else (q, None, s)
              for q, s in qs]
        mine = qs[rank::world]  # whole groups: each rank its own questions
        batch, rows = [], []
        model.eval()
        for i, src in enumerate([kb] + ([drills[1]] if drills else [])):  # per KB, in passes of rl_rows_per_pass rows
            b = [(q, sw) for q, sw, s in mine if s is src for _ in range(G)]
            for j in range(0, len(b), per_pass):  # a few rows at a time: on a CPU that beats one wide batch
                chunk, swaps = zip(*b[j:j + per_pass])
                batch += chunk
                rows += refrag_rollouts(model, tokenizer, list(chunk), src, p["k"], p["retriever"],
                                        p["max_hops"], p["rl_max_new_tokens"], temperature=p["rl_temperature"],
                                        seed=p["rl_seed"] * 100_003 + step + 7919 * rank + 104_729 * i + 15_485_863 * j,
                                        copy=p["rl_copy_guard"], swaps=list(swaps))
        model.train()
        parts = [reward(q, r, w) for q, r in zip(batch, rows)]
        adv = group_advantages([x["reward"] for x in parts], G)
        mult = 1.0 - (step - 1) / total  # linear decay to 0, as nanochat's chat_rl
        for o in opts:
            for g in o.param_groups:
                g["lr"] = g["initial_lr"] * mult
        n_tokens = None
        if world > 1:  # normalize by every rank's sampled tokens, then sum the gradients: one big batch
            n_tokens = int(_all_sum(torch.tensor([float(sum(sum(r["masks"]) for r in rows))], device=device)))
        loss, entropy = policy_backward(model, rows, adv, pad, n_tokens, p["rl_temperature"], banned,
                                        per_pass) if rows else (0.0, 0.0)
        for prm in model.parameters():  # no gradient (every group flat) steps as a zero one: Adam's moments still move
            if prm.grad is None:
                prm.grad = torch.zeros_like(prm)
            if world > 1:
                dist.all_reduce(prm.grad)
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)
        if ema is not None:
            with torch.no_grad():
                for k, t in model.state_dict().items():
                    if t.is_floating_point():
                        ema[k].lerp_(t, 1.0 - decay)
        parts, rows_info = gather(parts), gather([(len(r["queries"]) - 1, len(tokenizer.encode(r["raw"]))) for r in rows])
        R = torch.tensor([x["reward"] for x in parts]).view(Q, G)
        rec = {"step": step, "loss": _all_sum(torch.tensor([loss], device=device)).item(),
               "reward": float(R.mean()), "entropy": sum(gather([entropy])) / world, "lr_mult": mult,
               **{f"reward_{k}": sum(x[k] for x in parts) / len(parts)
                  for k in ("em", "citation", "unsupported", "wrong", "format", "retrieval", "bad_query")},
               "searches_per_rollout": sum(s for s, _ in rows_info) / len(rows_info),
               "flat_groups": float((R.max(1).values == R.min(1).values).float().mean()),
               "answer_tokens": sum(t for _, t in rows_info) / len(rows_info)}
        if step % p["rl_eval_every"] == 0 or step == total:
            if ema is not None:
                live = {k: t.clone() for k, t in model.state_dict().items()}
                model.load_state_dict(ema)  # val judges, and save keeps, the average
            v = val_em(model, tokenizer, val_qs, kb, rp, copy=p["rl_copy_guard"])
            rec.update({("val_em" if t == "all" else f"val_em_{t}"): x for t, x in v.items()})
            if rec["val_em"] > best[0]:
                best = (rec["val_em"], step)
                save(step, rec["val_em"])
            if ema is not None:
                model.load_state_dict(live)
        history.append(rec)
        if rank == 0:
                log({f"rl_{k}": v for k, v in rec.items() if k != "step"}, step)
        if step % p["log_every"] == 0 or "val_em" in rec:
            el = time.time() - t0
            print0(f"[rl] step {step}/{total} | reward {rec['reward']:.3f} | em {rec['reward_em']:.3f} | "
                   f"searches {rec['searches_per_rollout']:.2f} | flat groups {rec['flat_groups']:.2f}"
                   + (f" | val EM {_fmt(v)} (best {best[0]:.3f} at {best[1]})" if "val_em" in rec else "")
                   + f" | ETA {el / step * (total - step):.0f}s")
    state, _, _ = load_checkpoint(out_dir)  # the kept step: the best by val EM
    model.load_state_dict(state)
    return {"rl_best_step": best[1], "rl_best_val_em": best[0], "rl_steps": total, "rl_seconds": time.time() - t0,
            "history": history}
