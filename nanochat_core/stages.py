"""What each training stage does, as plain functions over paths and params.

steps/<stage>.py are thin adapters around these, and flows/ add Prefect and MLflow around the
steps. Nothing here knows about orchestration: every path arrives as an argument (dvc.yaml
names them), progress goes through a `log(metrics, step)` callback, and the run context
(MLflow run id, pipeline run id, git commit) arrives as the `run` dict that goes into each
checkpoint's lineage.

A fine-tuning stage is two public parts: `<stage>_conversations(section, qa, kb)` builds its
training set, and `finetune(...)` trains on it. Each data source of a training set draws from
its own seeded rng (`rngs`), so adding or resizing one source changes no other's examples.
"""
import hashlib
import json
import random
from pathlib import Path

import torch
import torch.distributed as dist

from nanochat_core import dvcfile, rag
from nanochat_core.checkpoint import checkpoint_hash, load_model
from nanochat_core.common import REPO_ROOT, git_commit, hash_path, print0, read_jsonl, sha256_file
from nanochat_core.data.questions import question_pools
from nanochat_core.data.world import fresh_people_world
from nanochat_core.model import GPT, GPTConfig
from nanochat_core.tokenizer import Tokenizer
from nanochat_core.train import ConversationBatches, TokenStream, evaluate_bpb, evaluate_loss, resolve_device, train

MULTI_HOP = ("2hop", "3hop")  # the composed question types, which only the REFRAG stage trains on by default

# ------------------------------------------------------------------------------ lineage

def make_lineage(stage, run=None, parent_ckpt=None, data=None):
    """The lineage record every checkpoint carries: parent checkpoint hash, the MLflow run
    that made it (`run`: {"mlflow_run_id", "pipeline_run_id", "git_commit"} from the flow),
    hashes of its data inputs, the git commit."""
    run = run or {}
    lin = {"stage": stage, "mlflow_run_id": run.get("mlflow_run_id"), "pipeline_run_id": run.get("pipeline_run_id"),
           "git_commit": run.get("git_commit") or git_commit(),
           "data_hashes": {name: hash_path(p) for name, p in (data or {}).items()}}
    if parent_ckpt is not None:
        lin["parent_checkpoint"] = str(parent_ckpt)
        lin["parent_checkpoint_hash"] = checkpoint_hash(parent_ckpt)
    return lin


# Deps whose edits cannot change a checkpoint's weights, left out of stage_code_hash: the loss-plot
# writer, and refrag_finetune's RL-phase modules (RL never resumes, so editing them reruns RL, not the warm-up).
OUTPUT_ONLY_CODE = ("nanochat_core/report.py",)
RL_PHASE_CODE = ("nanochat_core/rl.py", "nanochat_core/inference.py", "nanochat_core/engine.py",
                 "nanochat_core/metrics.py")


def resume_key(params, sections, parent_hash, code_hash=""):
    """What a step checkpoint must match to be resumed from: the stage's params sections, its
    parent (checkpoint or corpus) and its code (stage_code_hash). After any of them changes the
    stage starts over. The rl_* keys configure refrag_finetune's RL phase, which runs after the
    warm-up and never resumes, so they are left out: changing one (another rl_seed, say) reruns
    RL, not the warm-up."""
    sec = {k: {n: v for n, v in params[k].items() if not n.startswith("rl_")} for k in sections}
    blob = json.dumps({"params": sec, "parent": parent_hash, "code": code_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def stage_code_hash(stage, root=REPO_ROOT, skip=None):
    """sha256 over the Python files among `stage`'s deps in root/dvc.yaml (every .py under a
    listed folder), by path and content, leaving out `skip` (default: OUTPUT_ONLY_CODE, plus
    RL_PHASE_CODE for refrag_finetune). DVC reruns a stage when one of them changes, and the
    rerun must train: checkpoint dirs persist, so without this a finished step checkpoint made
    by the old code would be "resumed" and its stale weights handed back."""
    if skip is None:
        skip = OUTPUT_ONLY_CODE + (RL_PHASE_CODE if stage == "refrag_finetune" else ())
    h = hashlib.sha256()
    for dep in sorted(dvcfile.deps(stage, dvcfile.load(Path(root) / "dvc.yaml"))):
        path = Path(root) / dep
        files = [path] if path.is_file() else sorted(path.rglob("*.py")) if path.is_dir() else []
        for f in files:
            rel = f.relative_to(root).as_posix()
            if f.suffix == ".py" and f.is_file() and rel not in skip:  # is_file: not a dangling editor lock link
                h.update(rel.encode())
                h.update(sha256_file(f).encode())
    return h.hexdigest()


def stage_resume_key(params, stage, parent_hash, root=REPO_ROOT):
    """A fine-tuning stage's resume key (its own params section, parent checkpoint and code);
    benchmarks.rl_runs checks a warm-up against it."""
    return resume_key(params, [stage], parent_hash, stage_code_hash(stage, root))


def rngs(seed, *sources):
    """One independent, seeded rng per data source (string seeds hash the same on every run)."""
    return {s: random.Random(f"{seed}:{s}") for s in sources}


# ------------------------------------------------------------------------------ pretrain

def read_corpus(corpus_dir):
    """Corpus records [{"text", "source"}] from the pretraining shards."""
    shards = sorted(Path(corpus_dir).glob("shard_*.jsonl"))
    if not shards:
        raise FileNotFoundError(f"no corpus shards in {corpus_dir}; run `dvc repro prepare_documents`")
    return [r for s in shards for r in read_jsonl(s)]


def tokenizer_texts(records, max_chars):
    """Text for BPE training: real text, and world text with people's names cut out.

    People are the held-out entity type. Trained on their names, BPE would give train people
    single merges while held-out names (absent from the corpus) split into many pieces, so
    the model would learn to copy short names and be tested on long ones. Everything else in
    the world (cities, companies, universities, relation phrases) is shared by train and test
    questions, and merging it matters: on real text alone "Gafi University" is 8 tokens and
    " Goraze" is " "+"G"+"or"+"a"+"ze", so every answer starts with a bare capital letter that
    a tiny model cannot tell apart from any other."""
    picked, budget = [], max_chars
    for r in records:
        if budget <= 0:
            break
        t = r["text"]
        for name in r.get("people", ()):
            t = t.replace(name, "")
        picked.append(t[:budget])
        budget -= len(picked[-1])
    return picked


def pretrain(params, corpus_dir, out_dir, tokenizer_dir, run=None, log=None):
    """Train the tokenizer on the corpus (into tokenizer_dir), then the base LM. Returns a summary."""
    p, tp = params["pretrain"], params["tokenizer"]
    device = resolve_device(p["device"])
    records = read_corpus(corpus_dir)
    texts = [r["text"] for r in records]
    rng = random.Random(p["seed"])
    tok = Tokenizer.train(iter(tokenizer_texts(records, tp["max_chars"])), tp["vocab_size"])
    if not dist.is_initialized() or dist.get_rank() == 0:  # every rank trains the same tokenizer; one writes it
        tok.save(Path(tokenizer_dir) / "tokenizer.json")
    cfg = GPTConfig.from_dict(params["model"])
    if tok.get_vocab_size() > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tok.get_vocab_size()} tokens but model.vocab_size is {cfg.vocab_size}; "
                         "set model.vocab_size >= tokenizer.vocab_size in params.yaml")
    # Documents joined by <|bos|>, as nanochat does; the last 5% of documents are validation.
    order = list(range(len(texts)))
    rng.shuffle(order)
    n_val = max(1, len(texts) // 20)
    bos = tok.get_bos_token_id()
    enc = tok.encode([texts[i] for i in order])

    def stream(rows):
        return [t for ids in rows for t in [bos] + ids]
    val_tokens, train_tokens = stream(enc[:n_val]), stream(enc[n_val:])
    token_bytes = torch.tensor(tok.token_byte_lengths() + [0] * (cfg.vocab_size - tok.get_vocab_size()))
    torch.manual_seed(p["seed"])
    model = GPT(cfg)
    meta = {"config": cfg.to_dict(), "tokenizer_hash": tok.hash, "stage": "pretrain",
            "resume_key": resume_key(params, ["tokenizer", "model", "pretrain"], hash_path(corpus_dir),
                                     stage_code_hash("pretrain")),
            "lineage": make_lineage("pretrain", run, None, {"corpus": corpus_dir})}

    def eval_fn(m):
        n_batches = max(1, p["eval_tokens"] // (8 * cfg.sequence_len))
        return {"val_bpb": evaluate_bpb(m, val_tokens, token_bytes, cfg.sequence_len, max_batches=n_batches)}
    summary = train(model, TokenStream(train_tokens, cfg.sequence_len), p, out_dir, meta, log=log,
                    eval_fn=eval_fn, device=device, name="pretrain")
    summary.update({"train_tokens": len(train_tokens), "val_tokens": len(val_tokens),
                    "vocab_size": tok.get_vocab_size(), "params": model.num_params()})
    return summary


# ------------------------------------------------------------------------------ training sets

def drill_world(p, kb, seed=None):
    """The world of reading drills (world.fresh_people_world): the KB's places, companies and
    universities with p["drill_people"] fresh people and new facts, seeded by `seed` (default:
    the stage's seed). Held-out questions ask about people never seen in training whose answers
    are places, companies and universities the model knows; a drill is the same task, and its
    answer must be read. (Facts the drills state about real places, such as the country a city
    lies in, are drawn anew, so they disagree with the KB as often as not; like counterfactual
    questions, they reward following the document, never memory.)"""
    names = {}
    for d in kb.docs:
        if d.get("source") == "world":
            names.setdefault(d["metadata"]["entity_type"], []).append(d["title"])
    return fresh_people_world(f"drill:{p['seed'] if seed is None else seed}", names, p["drill_people"])


def drill_kb(world, kb, rng):
    """The drill world's own KB, indexed like the real one (in memory)."""
    from nanochat_core.retrieval import KnowledgeBase
    return KnowledgeBase.build(rag.world_documents(world, rng), None, list(kb.retrievers), kb.config)


def learn_documents(convs, weight):
    """Mark each documents block of the drill conversations `convs` with loss_weight `weight`:
    the model is also trained, at that weight per token, to predict the blocks as plain text.

    Why: pretraining on documents about people named nowhere else (world.fresh_people_corpus)
    teaches the LM to copy a name it has never seen, and fine-tuning on answers alone erases
    that (measured: later mentions of a new name predicted ~0.9 after pretraining, 0.15 after
    midtrain without this loss, 0.90 with it at 0.02). A drill's documents are about people named nowhere else too, so a little loss
    on them keeps the copying that reading a held-out founder's name needs. Only drills: the
    real KB's documents hold held-out people's facts, which no weight may learn."""
    if weight:
        for c in convs:
            for m in c:
                if m["role"] == "documents":
                    m["loss_weight"] = weight
    return convs


def midtrain_conversations(p, qa, kb):
    """Chat format: closed-book QA about train entities, reading conversations (the gold
    document among random distractors, answers sometimes swapped in the documents so only
    reading scores), and p["drills"] reading drills over the drill world."""
    r = rngs(p["seed"], "mix", "reading", "drills")
    qa = [q for q in qa if q["type"] in ("single", "unanswerable")]
    pool = rag.answer_pool(qa)
    convs = []
    for q in qa:
        x = r["mix"].random()
        if x < p["closed_book_frac"] and q["type"] == "single":
            convs.append(rag.closed_book_conversation(q))
        elif x < p["closed_book_frac"] + p["reading_frac"]:
            docs = rag.gold_reading_docs(q, kb, p["n_distractors"], r["reading"])
            if r["reading"].random() < p["swap_frac"]:
                q, docs = rag.swap_answer(q, docs, pool, r["reading"])
            convs.append(rag.reading_conversation(q, docs))
    if p["drills"]:
        convs += learn_documents(rag.world_drills(drill_world(p, kb), p["drills"], p["drill_docs"], p["drill_questions"],
                                                  r["drills"]), p["drill_doc_loss"])
    return convs


def rag_conversations(p, qa, kb):
    """Questions with the live KB's top-k as the documents block (with abstain_frac the gold
    document is taken out and the target is to abstain; with swap_frac the answer is swapped
    in the documents), cited [n]; and p["drills"] drill-world questions with the top-k of the
    drill world's own KB (measured: these lift held-out RAG EM far more than random blocks,
    because their distractors are the real kind: documents sharing the question's words).
    With 1 <= k_min < k each example shows a k drawn from [k_min, k] (the architecture study
    trains on 1-8 documents, so it can ask how many each mixer reads)."""
    r = rngs(p["seed"], "questions", "drills")
    qa = [q for q in qa if q["type"] in p["question_types"]]
    docs = [] if not qa else rag.retrieved_blocks(kb, [q["question"] for q in qa], [set(q["gold_doc_ids"][-1]) for q in qa],
                                p["k"], p["retriever"], p["abstain_frac"], r["questions"], p["k_min"])
    pool = rag.answer_pool(qa)
    for i, q in enumerate(qa):
        if r["questions"].random() < p["swap_frac"]:
            qa[i], docs[i] = rag.swap_answer(q, docs[i], pool, r["questions"])
    convs = [rag.reading_conversation(q, d) for q, d in zip(qa, docs)]
    if p["drills"]:
        world = drill_world(p, kb)
        dkb = drill_kb(world, kb, r["drills"])
        convs += learn_documents(rag.retrieved_drills(world, dkb, p["drills"], p["k"], p["retriever"], r["drills"],
                                                      p["abstain_frac"], p["k_min"]), p["drill_doc_loss"])
    return convs


def refrag_conversations(p, qa, kb):
    """Gold multi-hop search trajectories (at most p["max_hops"] hops) with the retriever in
    the loop (an unanswerable question's trajectory searches up to the entity whose fact is
    missing, then abstains); rag_mix single-shot RAG conversations (answerable and not: without the
    unanswerable ones this stage unlearns abstaining); and p["drills"] gold trajectories over
    the drill world's KB, whose people are new, so a search must copy the name it reads
    (trained on the real train people alone, the model searched for names it remembered).
    The multi-hop questions of rl_holdout are left out: they are RL's."""
    r = rngs(p["seed"], "rag_mix", "drills")
    held = rl_holdout(p, qa)
    multi = [q for q in qa if q["type"] in p["question_types"] and len(q["hops"]) <= p["max_hops"] and q["id"] not in held]
    convs = [rag.trajectory_conversation(q, kb, p["k"], p["retriever"], p["max_hops"]) for q in multi]
    single = [q for q in qa if q["type"] in ("single", "unanswerable")]
    n_rag = int(len(convs) * p["rag_mix"])
    if n_rag and single:
        picked = [single[r["rag_mix"].randrange(len(single))] for _ in range(n_rag)]
        docs = rag.retrieve(kb, [q["question"] for q in picked], p["k"], p["retriever"])
        convs += [rag.reading_conversation(q, d) for q, d in zip(picked, docs)]
    if p["drills"]:
        world = drill_world(p, kb)
        dkb = drill_kb(world, kb, r["drills"])
        qs = drill_questions(world, p["seed"], p["question_types"], p["max_hops"])
        picked = [qs[r["drills"].randrange(len(qs))] for _ in range(p["drills"])]
        convs += learn_documents([rag.trajectory_conversation(q, dkb, p["k"], p["retriever"], p["max_hops"])
                                  for q in picked], p["drill_doc_loss"])
    return convs


def rl_holdout(p, qa):
    """The ids of the multi-hop train questions the REFRAG warm-up leaves to RL: a
    p["holdout_frac"] share of each type, drawn by the warm-up's seed (any rl_seed gets the same)."""
    held = set()
    for t in MULTI_HOP:
        ids = sorted(q["id"] for q in qa if q["type"] == t)
        random.Random(f"holdout:{p['seed']}:{t}").shuffle(ids)
        held |= set(ids[:round(len(ids) * p["holdout_frac"])])
    return held


def rl_questions(p, qa_dir):
    """The RL people's questions (qa_dir/rl.jsonl; none where older code prepared it), read
    before the warm-up trains, so a conflicting holdout_frac fails at once."""
    path = Path(qa_dir) / "rl.jsonl"
    return _no_holdout(p, read_jsonl(path) if path.exists() else [])


def _no_holdout(p, qa_rl):  # RL people's questions are then all of RL's: nothing to hold out for it
    if qa_rl and p["holdout_frac"] > 0:
        raise ValueError("refrag_finetune.holdout_frac must be 0 when the world has RL people (documents.world.rl_fraction > 0)")
    return qa_rl


def rl_pool(p, qa, qa_rl=()):
    """RL's questions (those of p["rl_question_types"], at most max_hops hops) and the rl_holdout
    ids. With RL people (qa_rl: rl_questions) all are theirs, KB-only people, so a rollout must
    read as test does; otherwise train ones, the multi-hop ones rl_holdout's alone if it has any."""
    def ok(q):
        return q["type"] in p["rl_question_types"] and len(q["hops"]) <= p["max_hops"]
    if _no_holdout(p, qa_rl):
        return [q for q in qa_rl if ok(q)], set()
    held = rl_holdout(p, qa)
    return [q for q in qa if ok(q) and (not held or q["type"] not in MULTI_HOP or q["id"] in held)], held


def drill_questions(world, seed, types, max_hops):
    """Every question of `types` about the drill world, at most max_hops hops."""
    return [q for (_, t), recs in sorted(question_pools(world, seed).items()) if t in types
            for q in recs if len(q["hops"]) <= max_hops]


# ------------------------------------------------------------------------------ fine-tuning

def finetune(stage, params, conversations, parent_dir, out_dir, tokenizer_path, run=None, log=None, data=None):
    """The one fine-tuning loop of midtrain, rag_finetune and refrag_finetune: render, hold
    out about p["eval_tokens"] tokens of conversations (their loss is measured every
    eval_every steps), train from the parent with loss on the assistant's tokens (and on the
    drills' documents at drill_doc_loss per token: learn_documents), save."""
    p = params[stage]
    device = resolve_device(p["device"])
    tok = Tokenizer.load(tokenizer_path)
    model, _ = load_model(parent_dir, tok, device)
    max_len = p["max_len"]
    rendered = [tok.render_conversation(c) for c in conversations]
    too_long = sum(len(ids) > max_len + 1 for ids, _ in rendered)
    if too_long:  # ConversationBatches cuts them, and a cut conversation can lose its answer
        print0(f"[{stage}] warning: {too_long} of {len(rendered)} conversations are longer than {stage}.max_len="
               f"{max_len} tokens and will be cut; raise max_len")
    order = list(range(len(rendered)))
    rngs(p["seed"], "held_out")["held_out"].shuffle(order)
    held, n_tok = set(), 0
    for i in order[:len(order) // 2]:  # never more than half
        if n_tok >= p["eval_tokens"]:
            break
        held.add(i)
        n_tok += min(len(rendered[i][0]), max_len + 1)
    train_rows = [r for i, r in enumerate(rendered) if i not in held]
    val = ConversationBatches([rendered[i] for i in sorted(held)], max_len, pad_id=tok.get_bos_token_id()) if held else None
    meta = {"config": model.config.to_dict(), "tokenizer_hash": tok.hash, "stage": stage,
            "resume_key": stage_resume_key(params, stage, checkpoint_hash(parent_dir)),
            "lineage": make_lineage(stage, run, parent_dir, data)}
    batches = ConversationBatches(train_rows, max_len, pad_id=tok.get_bos_token_id())
    if p["compile"]:
        batches.pad_to = max_len
    eval_fn = (lambda m: {"val_loss": evaluate_loss(m, val, p["batch_size"])}) if val else None
    summary = train(model, batches, p, out_dir, meta, log=log, eval_fn=eval_fn, device=device, name=stage)
    summary.update({"conversations": len(train_rows), "held_out_conversations": len(held),
                    "truncated_conversations": too_long})
    print0(f"[{stage}] {len(train_rows)} training conversations, {len(held)} held out ({n_tok} tokens)")
    return summary


def refrag_rl(params, sft_dir, out_dir, tokenizer_path, qa_train, qa_val, kb, run=None, log=None, data=None,
              qa_rl=()):
    """REFRAG's RL phase (rl.py) from the warm-up checkpoint in sft_dir, on rl_pool's questions
    (the RL people's when qa_rl holds any, else train ones); the val questions of
    p["rl_question_types"] choose the step that is kept."""
    from nanochat_core import rl
    p = params["refrag_finetune"]
    device = resolve_device(p["device"])
    tok = Tokenizer.load(tokenizer_path)
    model, _ = load_model(sft_dir, tok, device)
    types = p["rl_question_types"]
    train_qs, held = rl_pool(p, qa_train, qa_rl)
    val_qs = [q for q in qa_val if q["type"] in types]
    if not train_qs or not val_qs:
        raise ValueError(f"refrag_finetune.rl_question_types={types}: no {'rl' if qa_rl else 'train'} "
                         "or no val questions of these types")
    drills = None
    if p["rl_drill_frac"] > 0:  # questions about fresh people, over their own KB: held-out-like, unlike train people
        world = drill_world(p, kb, seed=f"rl:{p['rl_seed']}")
        dkb = drill_kb(world, kb, random.Random(f"rl-drill-kb:{p['rl_seed']}"))
        drills = (drill_questions(world, p["rl_seed"], types, p["max_hops"]), dkb)
    meta = {"config": model.config.to_dict(), "tokenizer_hash": tok.hash, "stage": "refrag_finetune", "phase": "rl",
            "lineage": make_lineage("refrag_finetune", run, sft_dir, data)}
    torch.manual_seed(p["rl_seed"])
    summary = rl.train_rl(model, tok, train_qs, val_qs, kb, p, out_dir, meta, log=log, device=device, drills=drills)
    summary.update({"rl_train_questions": len(train_qs), "rl_val_questions": len(val_qs),
                    "rl_drill_questions": len(drills[0]) if drills else 0,
                    "rl_holdout_questions": len(held),
                    "rl_question_pool": "rl" if qa_rl else "train"})
    return summary
