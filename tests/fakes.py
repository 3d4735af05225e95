"""Test doubles shared by several test files (pytest puts tests/ on sys.path)."""
import torch

from nanochat_core.model import GPT, GPTConfig


def tiny_config(tok):
    """A 2-layer T+M GPT, long enough for multi-hop trajectories."""
    return GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, n_kv_head=2,
                     block_pattern="TM", headdim=16, sequence_len=4096)


def on_file(docs, word="Zed"):
    """`docs`, each with a sentence naming `word`, so a scripted answer of `word` is one its
    sources hold and inference.ground keeps it (an answer no shown document holds becomes the
    abstention)."""
    return [{**d, "text": f"{d['text']} {word} is on file."} for d in docs]


def tiny_world(seed, n_single, n_2hop, answer_word=None):
    """(world, bm25 KB, tokenizer, val + test questions) of a small seeded world; with
    answer_word, every document names it (on_file)."""
    from nanochat_core.data.questions import make_questions
    from nanochat_core.data.world import build_world
    from nanochat_core.retrieval import KnowledgeBase
    from nanochat_core.tokenizer import Tokenizer
    world = build_world(seed, n_people=40, n_cities=6, n_countries=2, n_companies=6, n_universities=3)
    docs = world.kb_documents()
    if answer_word:
        docs = on_file(docs, answer_word)
    kb = KnowledgeBase.build(docs, None, ["bm25"])
    tok = Tokenizer.train(iter([d["text"] for d in docs] * 3), vocab_size=600)
    qa = make_questions(world, seed, {}, {"single": n_single, "2hop": n_2hop})[0]
    return world, kb, tok, qa["val"] + qa["test"]


def distinct_city(world, tok):
    """A city whose name's tokens are all distinct, so a scripted model can write it."""
    return next(e.name for e in world.entities.values() if e.type == "city"
                and len(set(tok.encode(" " + e.name))) == len(tok.encode(" " + e.name)))


class BiasedGPT(GPT):
    """A real GPT (so the cache and the engine are real) with fixed biases on its logits:
    `always` {token: bias} everywhere, `after` {token: next token} forced after a token."""

    def __init__(self, config, always=None, after=None):
        super().__init__(config)
        self.always, self.after = always or {}, after or {}

    def forward(self, idx, targets=None, valid=None, cache=None, reduction="mean"):
        logits = super().forward(idx, targets, valid, cache, reduction)
        bias = torch.zeros_like(logits)
        for t, v in self.always.items():
            bias[..., t] += v
        for b in range(idx.shape[0]):
            for j in range(idx.shape[1]):
                nxt = self.after.get(idx[b, j].item())
                if nxt is not None:
                    bias[b, j, nxt] += 1e4
        return logits + bias


def scripted(tok, answer, search=None):
    """`after` for a BiasedGPT that writes `answer` (e.g. " Zed [1]") once the documents are
    shown; with `search`, it first searches for that text once. Each token of the script must
    be distinct, since the next token is chosen from the previous one alone."""
    sp = tok.encode_special
    a = tok.encode(answer) + [sp("<|assistant_end|>")]
    chain = ([sp("<|search_start|>")] + tok.encode(search) + [sp("<|search_end|>")]) if search else []
    after = {sp("<|assistant_start|>"): (chain or a)[0]}
    if chain:
        after.update(zip(chain, chain[1:]))
        after[sp("<|documents_end|>")] = a[0]  # after the follow-up's block: answer
    after.update(zip(a, a[1:]))
    ids = chain + a
    assert len(ids) == len(set(ids)), f"script {search!r} / {answer!r} repeats a token"
    return after
