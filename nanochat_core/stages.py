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
import subprocess
import sys
from pathlib import Path

import torch

from nanochat_core.checkpoint import check_tokenizer, checkpoint_hash, latest_step, load_checkpoint
from nanochat_core.common import REPO_ROOT, sha256_file
from nanochat_core.model import GPT, GPTConfig
from nanochat_core import rag
from nanochat_core.tokenizer import Tokenizer
from nanochat_core.train import (TRAIN_DEFAULTS, ConversationBatches, TokenStream, evaluate_bpb, resolve_device,
                                 train)

TOKENIZER_PATH = Path("checkpoints/tokenizer/tokenizer.json")


# ------------------------------------------------------------------------------ lineage

def hash_path(path):
    """sha256 of a file, or of a directory's files (relative names + contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "lineage.json"):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def make_lineage(stage, parent_ckpt=None, data=None):
    """The lineage record every checkpoint carries: parent checkpoint hash, the MLflow run
    that made it, hashes of its data inputs, the git commit."""
    lin = {"stage": stage, "mlflow_run_id": os.environ.get("NANOCHAT_MLFLOW_RUN_ID"), "git_commit": git_commit(),
           "data_hashes": {name: hash_path(p) for name, p in (data or {}).items()}}
    if parent_ckpt is not None:
        lin["parent_checkpoint"] = str(parent_ckpt)
        lin["parent_checkpoint_hash"] = checkpoint_hash(parent_ckpt)
    return lin


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


def tokenizer_texts(records, max_chars, min_real_chars=50_000):
    """Text for BPE training. Real text only when there is enough of it: trained on the
    world's documents, BPE learns train people's names as single merges while held-out
    names (absent from the corpus) split into many pieces, so the model would learn to copy
    short names and be tested on long ones. Without world text both split alike."""
    real = [r["text"] for r in records if r.get("source") != "world"]
    texts = real if sum(map(len, real)) >= min_real_chars else [r["text"] for r in records]
    picked, budget = [], max_chars
    for t in texts:
        if budget <= 0:
            break
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


def _render_all(tok, conversations, max_len):
    return [tok.render_conversation(c, max_tokens=max_len + 1) for c in conversations]


def _finetune(stage, parent_dir, out_dir, conversations, params, log, data):
    """Shared tail of the three fine-tuning stages: render, train from the parent, save."""
    p = params[stage]
    device = resolve_device(p.get("device"))
    tok = load_tokenizer()
    model, parent_meta = load_model(parent_dir, tok, device)
    seq_len = model.config.sequence_len
    rendered = _render_all(tok, conversations, seq_len)
    too_long = sum(len(ids) > seq_len + 1 for ids, _ in rendered)
    meta = {"config": model.config.to_dict(), "tokenizer_hash": tok.hash, "stage": stage,
            "resume_key": checkpoint_hash(parent_dir), "lineage": make_lineage(stage, parent_dir, data)}
    batches = ConversationBatches(rendered, seq_len, pad_id=tok.get_bos_token_id())
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
    stream = lambda rows: [t for ids in rows for t in [bos] + ids]
    val_tokens, train_tokens = stream(enc[:n_val]), stream(enc[n_val:])
    token_bytes = torch.tensor(tok.token_byte_lengths() + [0] * (cfg.vocab_size - tok.get_vocab_size()))
    torch.manual_seed(p["seed"])
    model = GPT(cfg)
    meta = {"config": cfg.to_dict(), "tokenizer_hash": tok.hash, "stage": "pretrain",
            "resume_key": hash_path(corpus_dir), "lineage": make_lineage("pretrain", None, {"corpus": corpus_dir})}
    eval_fn = lambda m: {"val_bpb": evaluate_bpb(m, val_tokens, token_bytes, cfg.sequence_len,
                                                 max_batches=max(1, p["eval_tokens"] // (8 * cfg.sequence_len)))}
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
    convs = []
    for q in qa:
        r = rng.random()
        if r < p["closed_book_frac"] and q["type"] == "single":
            convs.append(rag.closed_book_conversation(q))
        elif r < p["closed_book_frac"] + p["reading_frac"]:
            convs.append(rag.reading_conversation(q, rag.gold_reading_docs(q, kb, p["n_distractors"], rng)))
    return _finetune("midtrain", parent, out_dir, convs, params, log, {"qa_train": Path(qa_dir) / "train.jsonl",
                                                                        "kb": kb_dir})


def rag_finetune(params, qa_dir="data/qa", kb_dir="data/kb", parent="checkpoints/mid", out_dir="checkpoints/rag",
                 log=None):
    """Questions with the live KB's top-k as the documents block; abstain when the gold
    document was not retrieved; cite [n]."""
    from nanochat_core.retrieval import KnowledgeBase
    p = params["rag_finetune"]
    kb = KnowledgeBase.load(kb_dir)
    qa = [q for q in read_jsonl(Path(qa_dir) / "train.jsonl") if q["type"] in p["question_types"]]
    docs = rag.retrieve(kb, [q["question"] for q in qa], p["k"], p["retriever"])
    convs = [rag.reading_conversation(q, d) for q, d in zip(qa, docs)]
    return _finetune("rag_finetune", parent, out_dir, convs, params, log,
                     {"qa_train": Path(qa_dir) / "train.jsonl", "kb": kb_dir})


def refrag_finetune(params, qa_dir="data/qa", kb_dir="data/kb", parent="checkpoints/rag",
                    out_dir="checkpoints/refrag", log=None):
    """Supervised warm-up on gold multi-hop search trajectories, with the retriever in the
    loop; a share of single-shot RAG conversations keeps that skill."""
    from nanochat_core.retrieval import KnowledgeBase
    p = params["refrag_finetune"]
    kb = KnowledgeBase.load(kb_dir)
    qa = [q for q in read_jsonl(Path(qa_dir) / "train.jsonl") if q["type"] in p["question_types"]]
    convs = [rag.trajectory_conversation(q, kb, p["k"], p["retriever"]) for q in qa]
    rng = random.Random(p["seed"])
    single = [q for q in qa if q["type"] == "single"]
    n_rag = int(len(convs) * p["rag_mix"])
    if n_rag and single:
        picked = [single[rng.randrange(len(single))] for _ in range(n_rag)]
        docs = rag.retrieve(kb, [q["question"] for q in picked], p["k"], p["retriever"])
        convs += [rag.reading_conversation(q, d) for q, d in zip(picked, docs)]
    return _finetune("refrag_finetune", parent, out_dir, convs, params, log,
                     {"qa_train": Path(qa_dir) / "train.jsonl", "kb": kb_dir})


def evaluate(params, qa_dir="data/qa", kb_dir="data/kb", ckpt_root="checkpoints", log=None):
    """Every checkpoint x mode x question type on the test questions. Returns
    {"results": {ckpt: {mode: {type: metrics}}}, "headline": {...}, "predictions": [...]}."""
    from nanochat_core.retrieval import KnowledgeBase
    p = params["evaluate"]
    device = resolve_device(p.get("device"))
    kb = KnowledgeBase.load(kb_dir)
    tok = load_tokenizer()
    test = read_jsonl(Path(qa_dir) / "test.jsonl")
    groups = {}
    for q in test:
        t = "known_single" if q.get("known") else q["type"]
        groups.setdefault(t, []).append(q)
    groups = {t: rag.sample(qs, p["max_questions_per_type"], p["seed"]) for t, qs in sorted(groups.items())}
    results, predictions = {}, []
    for ck in p["checkpoints"]:
        model, _ = load_model(Path(ckpt_root) / _CKPT_DIRS[ck], tok, device)
        model.eval()
        for mode in p["modes"]:
            for t, qs in groups.items():
                preds = rag.answer_questions(model, tok, qs, mode, kb, p["k"], p["retriever"], p["max_hops"],
                                             p["max_new_tokens"], p["batch_size"])
                agg = rag.aggregate(rag.score(qs, preds))
                results.setdefault(ck, {}).setdefault(mode, {})[t] = agg
                predictions += [{"checkpoint": ck, "mode": mode, **pr} for pr in preds]
                print(f"[evaluate] {ck:7s} {mode:11s} {t:14s} n={agg['n']:3d} EM {agg['em']:.3f} "
                      f"F1 {agg['f1']:.3f} halluc {agg['hallucinated']:.3f}", file=sys.stderr, flush=True)
                if log:
                    log({f"{ck}.{mode}.{t}.em": agg["em"]}, None)
    return {"results": results, "headline": headline(results), "predictions": predictions}


_CKPT_DIRS = {"base": "base", "mid": "mid", "rag": "rag", "refrag": "refrag"}


def headline(results):
    """The numbers the README's claims rest on (None where a combination was not run)."""
    def em(ck, mode, t):
        return results.get(ck, {}).get(mode, {}).get(t, {}).get("em")
    final = "refrag" if "refrag" in results else ("rag" if "rag" in results else next(iter(results), None))
    rag_ck = "rag" if "rag" in results else final
    return {
        "rag_em_single_test": em(rag_ck, "rag", "single"),
        "closed_book_em_single_test": em(rag_ck, "closed_book", "single"),
        "closed_book_em_known_single": em(rag_ck, "closed_book", "known_single"),
        "rag_em_2hop": em(final, "rag", "2hop"),
        "refrag_em_2hop": em(final, "refrag", "2hop"),
        "refrag_em_3hop": em(final, "refrag", "3hop"),
        "rag_abstention_unanswerable": (results.get(rag_ck, {}).get("rag", {}).get("unanswerable") or {}).get("abstained"),
        "rag_em_counterfactual": em(rag_ck, "rag", "counterfactual"),
    }
