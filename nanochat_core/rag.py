"""Putting documents into conversations: the formats every stage trains on and inference
prompts with (closed-book, one documents block, a multi-hop search trajectory), and the
reading drills. Answers cite the documents they used as [n] (their number in the block).
"""
import re

from nanochat_core.data.templates import QUESTION_TEMPLATES
from nanochat_core.data.world import ABSTAIN, FORWARD


def cited_answer(answer, docs, gold_ids):
    """The target text: the answer, then [n] for each shown document that is gold."""
    if answer == ABSTAIN:
        return ABSTAIN
    n = [i + 1 for i, d in enumerate(docs) if d["id"] in gold_ids]
    return answer + "".join(f" [{i}]" for i in n)


def _doc(kb, doc_id):
    d = kb.get(doc_id)
    return {"id": d["id"], "title": d.get("title", ""), "text": d["text"]}


def retrieve(kb, queries, k, retriever):
    """Top-k documents for each query, as lists of {id, title, text}."""
    return [[_doc(kb, h.doc_id) for h in hits] for hits in kb.search(list(queries), k=k, retriever=retriever)]


def closed_book_conversation(qa, with_answer=True):
    msgs = [{"role": "user", "content": qa["question"]}]
    if with_answer:
        msgs.append({"role": "assistant", "content": qa["answers"][0]})
    return msgs


def reading_conversation(qa, docs, with_answer=True):
    """Single-shot RAG: the question, one documents block, the (cited) answer. If the final
    hop's gold document is not among `docs`, the right answer is to abstain."""
    msgs = [{"role": "user", "content": qa["question"]}, {"role": "documents", "documents": docs}]
    if with_answer:
        gold = set(qa["gold_doc_ids"][-1])
        answer = qa["answers"][0] if any(d["id"] in gold for d in docs) else ABSTAIN
        msgs.append({"role": "assistant", "content": cited_answer(answer, docs, gold)})
    return msgs


def swap_answer(qa, docs, pool, rng):
    """Counterfactual drill: replace the answer everywhere in the shown documents with another
    value of the same relation, and make that the target. Memory cannot answer it, only
    reading can; without drills the model learns to recall train facts instead of copying,
    which does nothing for held-out entities."""
    old = qa["answers"][0]
    choices = swap_choices(pool, qa["relation"], old)
    if not choices or not any(old in d["text"] for d in docs):
        return qa, docs
    new = rng.choice(choices)
    return {**qa, "answers": [new]}, swap_docs(docs, old, new, titles=False)


def swap_choices(pool, relation, old):
    """The values of `relation` that may replace `old`: none equal, contain or sit inside it."""
    return [a for a in pool.get(relation, []) if a != old and a not in old and old not in a]


def swap_docs(docs, old, new, titles=True):
    """docs with every whole-word `old` in their text (and titles) replaced by `new`."""
    pat = re.compile(rf"(?<!\w){re.escape(old)}(?!\w)")
    def sub(text):
        return pat.sub(lambda m: new, text)  # a function: a backslash in `new` is text, not a template
    return [{**d, "text": sub(d["text"]), **({"title": sub(d["title"])} if titles and d.get("title") else {})}
            for d in docs]


def swap_question(qa, pool, rng):
    """RL's live counterfactual: (qa with another answer of its relation, (old, new)) for the
    search tool to rewrite every document it shows, titles included; (qa, None) when the
    question has no swappable answer (an abstention, or a relation with one value). A value
    the question names (its own subject as another company's founder) is never put in."""
    old = qa["answers"][0]
    choices = [] if old == ABSTAIN else [a for a in swap_choices(pool, qa.get("relation"), old)
                                         if a not in qa["question"]]
    if not choices:
        return qa, None
    new = rng.choice(choices)
    return {**qa, "answers": [new]}, (old, new)


def answer_pool(questions):
    """relation -> the distinct answers seen for it (swap_answer's replacement values)."""
    pool = {}
    for q in questions:
        if q["answers"][0] != ABSTAIN:
            pool.setdefault(q["relation"], set()).add(q["answers"][0])
    return {k: sorted(v) for k, v in pool.items()}


def world_drills(world, n, n_docs, n_questions, rng, unseen_frac=0.1):
    """n reading conversations over `world`: n_docs random documents (each in a random one
    of three renderings) and up to n_questions single-hop questions about them, asked one
    after another: the first before the documents block (the evaluation format), the rest
    as follow-up turns. Every answer is a lookup in the block, so one block of documents
    gives several answers' worth of training signal. A fact the world lacks, or (with
    probability unseen_frac) a question about an entity whose document is not shown, is
    answered by abstaining."""
    inverse = world._inverse(world.facts, frozenset())
    ids = list(world.entities)
    asked_about = [s for s in ids if FORWARD[world.entities[s].type]]
    convs = []
    for _ in range(n):
        chains = []
        while not chains:  # a block of countries alone has nothing to ask; draw again
            picks = rng.sample(ids, n_docs)
            chains = [(s, r) for s in picks for r in FORWARD[world.entities[s].type]]
        docs = [{"id": d, "title": world.name(d), "text": world.render(d, rng.randrange(3), world.facts, inverse=inverse)}
                for d in picks]
        asked = rng.sample(chains, min(n_questions, len(chains)))
        for j in range(len(asked)):
            if rng.random() < unseen_frac:
                s = asked_about[rng.randrange(len(asked_about))]
                if s not in picks:
                    asked[j] = (s, rng.choice(FORWARD[world.entities[s].type]))
        msgs = []
        for j, (s, r) in enumerate(asked):
            e, obj = world.entities[s], world.facts[s].get(r)
            msgs.append({"role": "user", "content": rng.choice(QUESTION_TEMPLATES[f"{e.type}.{r}"]).format(s=e.name)})
            if j == 0:
                msgs.append({"role": "documents", "documents": docs})
            answer = ABSTAIN if obj is None or s not in picks else world.name(obj)
            msgs.append({"role": "assistant", "content": cited_answer(answer, docs, {s})})
        convs.append(msgs)
    return convs


def world_documents(world, rng):
    """One KB document per entity of `world`, each in a random one of the three renderings."""
    inverse = world._inverse(world.facts, frozenset())
    return [{"id": e, "title": world.name(e), "text": world.render(e, rng.randrange(3), world.facts, inverse=inverse),
             "source": "drill", "metadata": {"entity_type": world.entities[e].type}} for e in world.entities]


def draw_k(k, k_min, rng):
    """How many documents a training example shows: k, or with 1 <= k_min < k a uniform draw
    from [k_min, k]. k_min 0 (or k) draws nothing, so a fixed k keeps every example as it was."""
    return k if not k_min or k_min >= k else rng.randint(k_min, k)


def retrieved_blocks(kb, questions, gold_ids, k, retriever, abstain_frac, rng, k_min=None):
    """The top-k for each question. With probability abstain_frac the question's gold
    documents (`gold_ids`, one set per question) are taken out and the next hits fill their
    place, so the right answer becomes to abstain. One search for k + 3 hits serves both.
    With 1 <= k_min < k each block's size is drawn from [k_min, k] (draw_k)."""
    blocks = []
    for hits, gold in zip(retrieve(kb, questions, k + 3, retriever), gold_ids):
        if rng.random() < abstain_frac:
            hits = [d for d in hits if d["id"] not in gold]
        blocks.append(hits[:draw_k(k, k_min, rng)])
    return blocks


def retrieved_drills(world, kb, n, k, retriever, rng, abstain_frac=0.1, k_min=None):
    """n single-hop questions about random entities of `world`, each with the top-k of
    `kb` (built from world_documents) as its documents block: the same format and the same
    kind of distractors as the RAG stage's real conversations (the retriever ranks the
    subject's document first most of the time; the others share the question's words, often
    the subject's name). With probability abstain_frac the subject's document is left out and
    the target is to abstain: the model must check whose document it reads, not just copy [1]."""
    asked_about = [s for s in world.entities if FORWARD[world.entities[s].type]]
    qas = []
    for _ in range(n):
        s = asked_about[rng.randrange(len(asked_about))]
        e = world.entities[s]
        r = rng.choice(FORWARD[e.type])
        obj = world.facts[s].get(r)
        qas.append({"question": rng.choice(QUESTION_TEMPLATES[f"{e.type}.{r}"]).format(s=e.name),
                    "answers": [ABSTAIN if obj is None else world.name(obj)], "gold_doc_ids": [[s]]})
    blocks = retrieved_blocks(kb, [q["question"] for q in qas], [set(q["gold_doc_ids"][-1]) for q in qas],
                              k, retriever, abstain_frac, rng, k_min)
    return [reading_conversation(q, docs) for q, docs in zip(qas, blocks)]


def gold_reading_docs(qa, kb, n_distractors, rng):
    """The gold document of the last hop plus random distractors, shuffled (midtraining)."""
    gold_id = qa["gold_doc_ids"][-1][0]
    others = [d["id"] for d in rng.sample(kb.docs, min(len(kb.docs), n_distractors + 1)) if d["id"] != gold_id]
    docs = [_doc(kb, i) for i in [gold_id] + others[:n_distractors]]
    rng.shuffle(docs)
    return docs


def new_hits(kb, query, shown_ids, k, retriever):
    """The top-k documents for `query` among those not shown yet: a REFRAG answer never sees
    a document twice, so every block after the first holds only new hits."""
    hits = retrieve(kb, [query], k + len(shown_ids), retriever)[0]
    return [d for d in hits if d["id"] not in shown_ids][:k]


def trajectory_conversation(qa, kb, k, retriever, max_hops=3):
    """A gold REFRAG trajectory, question first: hop 1 is the question's own top-k (exactly
    what single-shot RAG shows); then one follow-up search per bridge entity (the name the
    previous hop's document gives), each block holding only documents not shown yet; then the
    answer, citing its document when that is in the last block (citations number the last
    block; an answer read from an earlier block cites nothing). A multi-hop question searches for every bridge even when
    its document is already on screen, so "a composed question: search for the bridge" is the
    rule to learn (measured on val: skipping such hops taught the model not to search on 42% of
    2-hop questions, mostly wrongly). When the question's top-k misses the subject's document,
    the first follow-up searches for the subject's name (if max_hops leaves room, else it is
    shown in hop 1). A gold document the retriever misses replaces the block's last hit, so the
    trajectory stays answerable."""
    hops = list(qa["hops"])
    msgs = [{"role": "user", "content": qa["question"]}]
    docs = retrieve(kb, [qa["question"]], k, retriever)[0]
    msgs.append({"role": "documents", "documents": docs})
    shown = {d["id"] for d in docs}
    todo = hops[1:]
    if hops[0]["doc_id"] not in shown:
        if len(hops) < max_hops:
            todo = hops
        else:  # no room to search for the subject: show it anyway
            docs[-1] = _doc(kb, hops[0]["doc_id"])
            shown = {d["id"] for d in docs}
    for hop in todo:
        docs = new_hits(kb, hop["query"], shown, k, retriever)
        if hop["doc_id"] not in shown and hop["doc_id"] not in {d["id"] for d in docs}:
            docs = docs[:k - 1] + [_doc(kb, hop["doc_id"])]
        msgs.append({"role": "search", "content": hop["query"]})
        msgs.append({"role": "documents", "documents": docs})
        shown |= {d["id"] for d in docs}
    msgs.append({"role": "assistant", "content": cited_answer(qa["answers"][0], docs, set(qa["gold_doc_ids"][-1]))})
    return msgs
