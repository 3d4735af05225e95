"""What each training/evaluation stage does, as plain functions over paths and params.

steps/<stage>.py are thin adapters around these; flows/ add Prefect and MLflow around the
steps. Nothing here knows about orchestration: progress goes through a `log(metrics, step)`
callback, and the MLflow run id (if any) arrives as the NANOCHAT_MLFLOW_RUN_ID variable so
that it can be written into each checkpoint's lineage.
"""
import hashlib
import json
import os
import random
import sys
from pathlib import Path

import torch

from nanochat_core import rag
from nanochat_core.checkpoint import check_tokenizer, checkpoint_hash, latest_step, load_checkpoint
from nanochat_core.common import git_commit, hash_path
from nanochat_core.model import GPT, GPTConfig
from nanochat_core.tokenizer import Tokenizer
from nanochat_core.train import TRAIN_DEFAULTS, ConversationBatches, TokenStream, evaluate_bpb, resolve_device, train

TOKENIZER_PATH = Path("checkpoints/tokenizer/tokenizer.json")


# ------------------------------------------------------------------------------ lineage

def make_lineage(stage, parent_ckpt=None, data=None):
    """The lineage record every checkpoint carries: parent checkpoint hash, the MLflow run
    that made it, hashes of its data inputs, the git commit."""
    lin = {"stage": stage, "mlflow_run_id": os.environ.get("NANOCHAT_MLFLOW_RUN_ID"),
           "pipeline_run_id": os.environ.get("NANOCHAT_PIPELINE_RUN_ID"),
           "git_commit": os.environ.get("NANOCHAT_GIT_COMMIT") or git_commit(),
           "data_hashes": {name: hash_path(p) for name, p in (data or {}).items()}}
    if parent_ckpt is not None:
        lin["parent_checkpoint"] = str(parent_ckpt)
        lin["parent_checkpoint_hash"] = checkpoint_hash(parent_ckpt)
    return lin


def resume_key(params, sections, parent_hash):
    """What a step checkpoint must match to be resumed from: the stage's params sections and
    its parent (checkpoint or corpus). After a params change the stage starts over."""
    blob = json.dumps({"params": {k: params[k] for k in sections}, "parent": parent_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ------------------------------------------------------------------------------ helpers

def read_jsonl(path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run the stage that makes it (`dvc repro prepare_documents`)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: malformed JSON ({e.msg}); regenerate it with "
                                     "`dvc repro prepare_documents`") from None
    return rows


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
    a tiny model cannot tell apart from any other (README, Status)."""
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


def train_cfg(section):
    return {k: section[k] for k in TRAIN_DEFAULTS if k in section}


def load_model(ckpt_dir, tokenizer, device):
    if latest_step(ckpt_dir) is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}; run the stage that trains it first (`dvc repro`)")
    state, meta, _ = load_checkpoint(ckpt_dir, map_location=device)
    check_tokenizer(meta, tokenizer)
    model = GPT(GPTConfig.from_dict(meta["config"]))
    model.load_state_dict(state)
    return model.to(device), meta


def load_tokenizer(path=TOKENIZER_PATH):
    return Tokenizer.load(path)


def _finetune(stage, parent_dir, out_dir, conversations, params, log, data):
    """Shared tail of the three fine-tuning stages: render, train from the parent (loss on
    the assistant's own tokens only), save."""
    p = params[stage]
    device = resolve_device(p.get("device"))
    tok = load_tokenizer()
    model, parent_meta = load_model(parent_dir, tok, device)
    max_len = p["max_len"]
    rendered = [tok.render_conversation(c) for c in conversations]
    too_long = sum(len(ids) > max_len + 1 for ids, _ in rendered)
    if too_long:  # ConversationBatches cuts them, and a cut conversation can lose its answer
        print(f"[{stage}] warning: {too_long} of {len(rendered)} conversations are longer than {stage}.max_len="
              f"{max_len} tokens and will be cut; raise max_len", file=sys.stderr, flush=True)
    meta = {"config": model.config.to_dict(), "tokenizer_hash": tok.hash, "stage": stage,
            "resume_key": resume_key(params, [stage], checkpoint_hash(parent_dir)),
            "lineage": make_lineage(stage, parent_dir, data)}
    batches = ConversationBatches(rendered, max_len, pad_id=tok.get_bos_token_id())
    summary = train(model, batches, train_cfg(p), out_dir, meta, log=log, device=device, name=stage)
    summary.update({"conversations": len(rendered), "truncated_conversations": too_long})
    return summary


# ------------------------------------------------------------------------------ stages

def pretrain(params, corpus_dir="data/corpus", out_dir="checkpoints/base", log=None):
    """Train the tokenizer on the corpus, then the base LM. Returns a summary dict."""
    p, tp = params["pretrain"], params["tokenizer"]
    device = resolve_device(p.get("device"))
    records = read_corpus(corpus_dir)
    texts = [r["text"] for r in records]
    rng = random.Random(p["seed"])
    tok = Tokenizer.train(iter(tokenizer_texts(records, tp["max_chars"])), tp["vocab_size"])
    tok.save(TOKENIZER_PATH)
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
            "resume_key": resume_key(params, ["tokenizer", "model", "pretrain"], hash_path(corpus_dir)),
            "lineage": make_lineage("pretrain", None, {"corpus": corpus_dir})}

    def eval_fn(m):
        n_batches = max(1, p["eval_tokens"] // (8 * cfg.sequence_len))
        return {"val_bpb": evaluate_bpb(m, val_tokens, token_bytes, cfg.sequence_len, max_batches=n_batches)}
    summary = train(model, TokenStream(train_tokens, cfg.sequence_len), train_cfg(p), out_dir, meta, log=log,
                    eval_fn=eval_fn, device=device, name="pretrain")
    summary.update({"train_tokens": len(train_tokens), "val_tokens": len(val_tokens),
                    "vocab_size": tok.get_vocab_size(), "params": model.num_params()})
    return summary


def midtrain(params, qa_dir="data/qa", kb_dir="data/kb", parent="checkpoints/base", out_dir="checkpoints/mid",
             log=None):
    """Conversation format: closed-book QA about train entities, and document-reading
    conversations (the gold document among random distractors)."""
    from nanochat_core.retrieval import KnowledgeBase
    p = params["midtrain"]
    kb = KnowledgeBase.load(kb_dir)
    qa = [q for q in read_jsonl(Path(qa_dir) / "train.jsonl") if q["type"] in ("single", "unanswerable")]
    rng = random.Random(p["seed"])
    pool = rag.answer_pool(qa)
    convs = []
    for q in qa:
        r = rng.random()
        if r < p["closed_book_frac"] and q["type"] == "single":
            convs.append(rag.closed_book_conversation(q))
        elif r < p["closed_book_frac"] + p["reading_frac"]:
            docs = rag.gold_reading_docs(q, kb, p["n_distractors"], rng)
            if rng.random() < p["swap_frac"]:
                q, docs = rag.swap_answer(q, docs, pool, rng)
            convs.append(rag.reading_conversation(q, docs))
    drills = _drills(p, kb, rng)
    return _finetune("midtrain", parent, out_dir, convs + drills, params, log,
                     {"qa_train": Path(qa_dir) / "train.jsonl", "kb": kb_dir})


def _drill_world(p, kb):
    """The drill world (rag.drill_world): the KB's places, companies and universities with
    p["drill_people"] fresh people and new facts."""
    names = {}
    for d in kb.docs:
        if d.get("source") == "world":
            names.setdefault(d["metadata"]["entity_type"], []).append(d["title"])
    return rag.drill_world(f"drill:{p['seed']}", names, n_people=p["drill_people"])


def _drills(p, kb, rng):
    """Midtraining's p["drills"] reading drills: p["drill_questions"] lookups each, in blocks
    of p["drill_docs"] random documents of the drill world."""
    if not p["drills"]:
        return []
    return rag.world_drills(_drill_world(p, kb), p["drills"], p["drill_docs"], p["drill_questions"], rng)


def _drill_kb(p, kb, rng):
    """The drill world and its own KB, indexed like the real one (in memory)."""
    from nanochat_core.retrieval import KnowledgeBase
    world = _drill_world(p, kb)
    return world, KnowledgeBase.build(rag.world_documents(world, rng), None, list(kb.retrievers), kb.config)


def _retrieved_drills(p, kb, rng):
    """The RAG stage's p["drills"]: questions about the drill world with the top-k of its own
    KB as the block. Measured: after midtraining's one-document drills, these lift held-out
    RAG EM at k=3 far more than random multi-document blocks, because the distractors are
    the real kind (documents sharing the question's words)."""
    if not p["drills"]:
        return []
    world, drill_kb = _drill_kb(p, kb, rng)
    return rag.retrieved_drills(world, drill_kb, p["drills"], p["k"], p["retriever"], rng, p["abstain_frac"])


def _trajectory_drills(p, kb, rng):
    """REFRAG's p["drills"]: gold search trajectories for the drill world's questions over its
    own KB. Its people are new, so a search must copy the name from the question or the
    documents; trained on the real train people alone, the model searched for names it
    remembered and never for a held-out one."""
    from nanochat_core.data.world import question_pools
    if not p["drills"]:
        return []
    world, drill_kb = _drill_kb(p, kb, rng)
    qs = [q for (_, t), recs in sorted(question_pools(world, p["seed"]).items()) if t in p["question_types"]
          for q in recs]
    picked = [qs[rng.randrange(len(qs))] for _ in range(p["drills"])]
    return [rag.trajectory_conversation(q, drill_kb, p["k"], p["retriever"]) for q in picked]


def rag_finetune(params, qa_dir="data/qa", kb_dir="data/kb", parent="checkpoints/mid", out_dir="checkpoints/rag",
                 log=None):
    """Questions with the live KB's top-k as the documents block; abstain when the gold
    document was not retrieved; cite [n]."""
    from nanochat_core.retrieval import KnowledgeBase
    p = params["rag_finetune"]
    kb = KnowledgeBase.load(kb_dir)
    qa = [q for q in read_jsonl(Path(qa_dir) / "train.jsonl") if q["type"] in p["question_types"]]
    # Abstention practice: for a share of questions the gold document is taken out of the
    # block, so the target becomes "The sources do not say."
    rng = random.Random(p["seed"])
    docs = rag.retrieved_blocks(kb, [q["question"] for q in qa], [set(q["gold_doc_ids"][-1]) for q in qa],
                                p["k"], p["retriever"], p["abstain_frac"], rng)
    pool = rag.answer_pool(qa)
    for i, q in enumerate(qa):
        if rng.random() < p["swap_frac"]:
            qa[i], docs[i] = rag.swap_answer(q, docs[i], pool, rng)
    convs = [rag.reading_conversation(q, d) for q, d in zip(qa, docs)] + _retrieved_drills(p, kb, rng)
    return _finetune("rag_finetune", parent, out_dir, convs, params, log,
                     {"qa_train": Path(qa_dir) / "train.jsonl", "kb": kb_dir})


def refrag_finetune(params, qa_dir="data/qa", kb_dir="data/kb", parent="checkpoints/rag",
                    out_dir="checkpoints/refrag", log=None):
    """Supervised warm-up on gold multi-hop search trajectories, with the retriever in the
    loop; a share of single-shot RAG conversations (answerable and not) keeps that skill."""
    from nanochat_core.retrieval import KnowledgeBase
    p = params["refrag_finetune"]
    kb = KnowledgeBase.load(kb_dir)
    train_qa = read_jsonl(Path(qa_dir) / "train.jsonl")
    qa = [q for q in train_qa if q["type"] in p["question_types"]]
    convs = [rag.trajectory_conversation(q, kb, p["k"], p["retriever"]) for q in qa]
    rng = random.Random(p["seed"])
    # Unanswerable questions too: without them this stage unlearns abstaining in single-shot RAG.
    single = [q for q in train_qa if q["type"] in ("single", "unanswerable")]
    n_rag = int(len(convs) * p["rag_mix"])
    if n_rag and single:
        picked = [single[rng.randrange(len(single))] for _ in range(n_rag)]
        docs = rag.retrieve(kb, [q["question"] for q in picked], p["k"], p["retriever"])
        convs += [rag.reading_conversation(q, d) for q, d in zip(picked, docs)]
    convs += _trajectory_drills(p, kb, rng)
    return _finetune("refrag_finetune", parent, out_dir, convs, params, log,
                     {"qa_train": Path(qa_dir) / "train.jsonl", "kb": kb_dir})
