"""Question sets over a synthetic world: every answerable chain, sampled into train/val/test.

A question key such as "person.born_in.located_in" (templates.QUESTION_TEMPLATES) is walked
from every subject of its type; the chain's hops become the gold trajectory (query, gold
document, answer per hop). A chain that ends at a missing optional fact is an unanswerable
question; chains through a counterfactual edit are left out of every set but the
counterfactual one. Which split a question lands in follows from its entities: any test
person in the chain makes it a held-out (val/test) question, else any RL person an rl one.
"""
import random

from nanochat_core.data.templates import QUESTION_TEMPLATES
from nanochat_core.data.world import ABSTAIN, OPTIONAL_RELATIONS

HOP_TYPE = {1: "single", 2: "2hop", 3: "3hop"}


def _walk(world, key):
    """All chains for question key `key`: yields (subject, hops, complete) where hops is a
    list of (entity, relation, object) up to the end or up to a missing optional fact."""
    etype, *rels = key.split(".")
    for s in world.ids(etype):
        cur, hops = s, []
        for r in rels:
            obj = world.facts[cur].get(r)
            hops.append((cur, r, obj))
            if obj is None:
                break
            cur = obj
        yield s, hops, hops[-1][2] is not None


def _record(world, key, subject, hops, qtype, rng, answer=None):
    s_name = world.name(subject)
    hop_records = []
    for ent, rel, obj in hops:
        hop_records.append({"query": world.name(ent), "doc_id": ent,
                            "answer": ABSTAIN if obj is None else world.name(obj)})
    if answer is not None:
        hop_records[-1]["answer"] = answer
    touches = {e for e, _, _ in hops} | {o for _, _, o in hops if isinstance(o, str)}
    splits = {world.entities[x].split for x in touches}
    split = "test" if "test" in splits else "rl" if "rl" in splits else "train"
    return {"id": None, "type": qtype, "question": rng.choice(QUESTION_TEMPLATES[key]).format(s=s_name),
            "answers": [hop_records[-1]["answer"]], "gold_doc_ids": [[h["doc_id"]] for h in hop_records],
            "hops": hop_records, "entity_split": split, "relation": key, "subject": s_name,
            "subject_id": subject}


def _balanced_sample(cands, n, rng):
    """Up to n candidates, round-robin over relations so rare relations are not drowned."""
    groups = {}
    for c in cands:
        groups.setdefault(c["relation"], []).append(c)
    for k in sorted(groups):
        rng.shuffle(groups[k])
    out, i = [], 0
    keys = sorted(groups)
    while len(out) < n and any(i < len(groups[k]) for k in keys):
        for k in keys:
            if i < len(groups[k]) and len(out) < n:
                out.append(groups[k][i])
        i += 1
    rng.shuffle(out)
    return out


def question_pools(world, seed):
    """Every possible question, as {(entity_split, type): [records]} (ids unset).
    Chains through an edited fact are left out; the edits become counterfactual questions."""
    rng = random.Random(f"questions:{seed}")
    edited = {(x["subject"], x["relation"]) for x in world.edits}
    pools = {}
    for key in QUESTION_TEMPLATES:
        for subject, hops, complete in _walk(world, key):
            if any((e, r) in edited for e, r, _ in hops):
                continue
            if complete:
                qtype = HOP_TYPE[len(hops)]
            elif hops[-1][1] in OPTIONAL_RELATIONS:
                qtype = "unanswerable"
            else:
                continue
            rec = _record(world, key, subject, hops, qtype, rng)
            pools.setdefault((rec["entity_split"], qtype), []).append(rec)
    cf = []
    for x in world.edits:
        s, r = x["subject"], x["relation"]
        key = f"{world.entities[s].type}.{r}"
        rec = _record(world, key, s, [(s, r, x["edited"])], "counterfactual", rng)
        rec["original_answer"] = world.name(x["original"])
        cf.append(rec)
    pools[("train", "counterfactual")] = cf
    return pools


def make_questions(world, seed, train_counts, eval_counts, n_known=0, val_fraction=0.25):
    """Question files {"train": [...], "val": [...], "test": [...], "rl": [...]} and a summary.

    train_counts / eval_counts: {type: max count} for single, 2hop, 3hop, unanswerable.
      train: questions about train entities only (no held-out person anywhere in the chain).
      eval: questions touching a test person, split into val (val_fraction) and test.
      rl: questions touching an RL person and no test person, up to train_counts (empty
      unless the world has RL people), drawn by their own generator: with no RL people the
      other files are exactly what they were before rl existed.
    test also gets every counterfactual question and `n_known` single-hop questions about
    train facts (entity_split "train", "known": true), held out of train, so evaluation can
    compare closed-book accuracy on facts seen in pretraining with unseen ones.
    Counts are caps: when fewer questions exist, all are used and the summary says so.
    """
    rng = random.Random(f"sample:{seed}")
    pools = question_pools(world, seed)
    summary = {"requested": {}, "available": {}, "produced": {}}
    known = _balanced_sample(pools.get(("train", "single"), []), n_known, rng)
    known_ids = {id(r) for r in known}
    for r in known:
        r["known"] = True
    files = {"train": [], "val": [], "test": [], "rl": []}
    rl_rng = random.Random(f"sample:{seed}:rl")
    for qtype in ("single", "2hop", "3hop", "unanswerable"):
        pool = [r for r in pools.get(("train", qtype), []) if id(r) not in known_ids]
        files["train"] += _balanced_sample(pool, train_counts.get(qtype, 0), rng)
        summary["requested"][f"train.{qtype}"] = train_counts.get(qtype, 0)
        summary["available"][f"train.{qtype}"] = len(pool)
        ev = _balanced_sample(pools.get(("test", qtype), []), eval_counts.get(qtype, 0), rng)
        n_val = round(len(ev) * val_fraction)
        files["val"] += ev[:n_val]
        files["test"] += ev[n_val:]
        summary["requested"][f"eval.{qtype}"] = eval_counts.get(qtype, 0)
        summary["available"][f"eval.{qtype}"] = len(pools.get(("test", qtype), []))
        files["rl"] += _balanced_sample(pools.get(("rl", qtype), []), train_counts.get(qtype, 0), rl_rng)
        summary["available"][f"rl.{qtype}"] = len(pools.get(("rl", qtype), []))
    rng.shuffle(files["train"])
    rl_rng.shuffle(files["rl"])
    files["test"] += pools[("train", "counterfactual")] + known
    summary["requested"]["known_single"] = n_known
    summary["available"]["known_single"] = len(pools.get(("train", "single"), []))
    for name, recs in files.items():
        counters = {}
        for r in recs:
            tag = "known" if r.get("known") else r["type"]
            counters[tag] = counters.get(tag, 0) + 1
            r["id"] = f"{name}-{tag}-{counters[tag]:05d}"
        summary["produced"][name] = len(recs)
    return files, summary
