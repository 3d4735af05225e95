"""The engine's search-tool hook: the query reaches the callback as text, the returned
tokens are forced into exactly the rows that made the call, with mask 0."""
import pytest
import torch

from nanochat_core.engine import Engine
from nanochat_core.model import GPT, GPTConfig
from nanochat_core.tokenizer import Tokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. Where was Ada born? Ada was born in Paris. "
        "Paris is located in France. ") * 30


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(iter([TEXT]), vocab_size=330)


class ScriptedGPT(GPT):
    """A real GPT (so the cache is real) whose next token is forced by a table keyed on the
    last input token: enough to script a search-call trajectory deterministically."""

    def __init__(self, config, script):
        super().__init__(config)
        self.script = script

    def forward(self, idx, targets=None, valid=None, cache=None, reduction="mean"):
        logits = super().forward(idx, targets, valid, cache, reduction)
        bias = torch.zeros_like(logits)
        for b in range(idx.shape[0]):
            for t in range(idx.shape[1]):
                nxt = self.script.get(idx[b, t].item())
                if nxt is not None:
                    bias[b, t, nxt] = 1e4
        return logits + bias


def test_tool_hook_forces_documents_into_calling_rows(tok):
    sp = tok.encode_special
    q = tok.encode(" Ada")
    ans = tok.encode(" Paris")
    assert len(q) == 1 and len(ans) == 1, "the script below needs one-token query and answer"
    script = {sp("<|assistant_start|>"): sp("<|search_start|>"), sp("<|search_start|>"): q[0],
              q[0]: sp("<|search_end|>"), sp("<|documents_end|>"): ans[0], ans[0]: sp("<|assistant_end|>"),
              sp("<|user_end|>"): ans[0]}
    torch.manual_seed(0)
    model = ScriptedGPT(GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, n_kv_head=2,
                                  block_pattern="TM", headdim=16), script).eval()
    calls = []
    docs = [{"id": "d1", "title": "Ada", "text": "Ada was born in Paris."}]

    def tool(query, row):
        calls.append((query, row))
        return tok.encode_documents(docs)

    row0 = tok.render_for_completion([{"role": "user", "content": "Where was Ada born?"}])
    row1 = tok.render_for_completion([{"role": "user", "content": "Where?"}])[:-1]  # ends at user_end: answers directly
    eng = Engine(model, tok, tool=tool)
    out, masks = eng.generate_batch([row0, row1], max_tokens=60, stop_tokens=[sp("<|assistant_end|>")])
    assert calls == [("Ada", 0)]  # one call, from row 0 only, with the decoded query text
    assert eng.queries == [["Ada"], []]  # what each row searched for, read back by inference
    forced = tok.encode_documents(docs)
    expected0 = [sp("<|search_start|>"), q[0], sp("<|search_end|>")] + forced + ans
    assert out[0] == expected0
    assert masks[0] == [1, 1, 1] + [0] * len(forced) + [1]
    assert out[1] == ans and masks[1] == [1]


def test_at_max_tool_calls_the_search_markers_are_masked_out(tok):
    sp = tok.encode_special
    q = tok.encode(" Ada")
    # a model that searches forever: its logits put +1e4 on <|search_start|> after each block
    script = {sp("<|assistant_start|>"): sp("<|search_start|>"), sp("<|search_start|>"): q[0],
              q[0]: sp("<|search_end|>"), sp("<|documents_end|>"): sp("<|search_start|>")}
    model = ScriptedGPT(GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=1, n_embd=32, n_head=2, n_kv_head=2,
                                  block_pattern="T"), script).eval()
    seen = []

    def tool(query, row):
        seen.append(query)
        return [sp("<|documents_start|>"), sp("<|documents_end|>")]

    eng = Engine(model, tok, tool=tool, max_tool_calls=2)
    prompt = tok.render_for_completion([{"role": "user", "content": "Where was Ada born?"}])
    out, masks = eng.generate_batch([prompt], max_tokens=40, stop_tokens=[sp("<|assistant_end|>")])
    assert seen == ["Ada", "Ada"] and eng.queries == [["Ada", "Ada"]]
    after = out[0][len(out[0]) - out[0][::-1].index(sp("<|documents_end|>")):]
    assert after and sp("<|search_start|>") not in after and sp("<|search_end|>") not in after
    assert all(m == 1 for m in masks[0][-len(after):])  # the model's own tokens: it had to answer


def test_a_row_out_of_tokens_returns_only_what_it_sampled(tok):
    """generate_batch drops the padding a stopped row gets while the others run on (a copy of its
    last token, mask 0): RL's backward would otherwise score rows of that padded length."""
    sp = tok.encode_special
    q, ans = tok.encode(" Ada"), tok.encode(" Paris")
    # row 0 repeats " Paris" for ever (never stops); row 1 searches, reads a block, then answers
    script = {sp("<|assistant_start|>"): sp("<|search_start|>"), sp("<|search_start|>"): q[0],
              q[0]: sp("<|search_end|>"), sp("<|documents_end|>"): ans[0], ans[0]: ans[0],
              sp("<|user_end|>"): ans[0]}
    model = ScriptedGPT(GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=1, n_embd=32, n_head=2, n_kv_head=2,
                                  block_pattern="T"), script).eval()
    docs = [{"id": "d1", "title": "Ada", "text": "Ada was born in Paris."}]
    eng = Engine(model, tok, tool=lambda query, row: tok.encode_documents(docs), max_tool_calls=1)
    row0 = tok.render_for_completion([{"role": "user", "content": "Where?"}])[:-1]  # ends at user_end
    row1 = tok.render_for_completion([{"role": "user", "content": "Where was Ada born?"}])
    out, masks = eng.generate_batch([row0, row1], max_tokens=4, stop_tokens=[sp("<|assistant_end|>")])
    assert out[0] == ans * 4 and masks[0] == [1] * 4 and eng.finished == [False, False]
    forced = tok.encode_documents(docs)
    assert out[1] == [sp("<|search_start|>"), q[0], sp("<|search_end|>")] + forced + ans * 4
    assert masks[1] == [1, 1, 1] + [0] * len(forced) + [1] * 4


def test_engine_rejects_empty_prompt():
    model = GPT(GPTConfig(vocab_size=50, n_layer=1, n_embd=32, n_head=2, n_kv_head=2))
    with pytest.raises(ValueError, match="at least one token"):
        Engine(model).generate_batch([[]], 5)


def test_a_search_end_without_a_start_searches_only_the_models_own_text(tok):
    """After a documents block the model writes ' Paris<|search_end|>' with no search_start:
    the query is ' Paris' (its own text since the block), never the forced documents."""
    sp = tok.encode_special
    q, ans = tok.encode(" Ada"), tok.encode(" Paris")
    script = {sp("<|assistant_start|>"): sp("<|search_start|>"), sp("<|search_start|>"): q[0],
              q[0]: sp("<|search_end|>"), sp("<|documents_end|>"): ans[0], ans[0]: sp("<|search_end|>")}
    model = ScriptedGPT(GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=1, n_embd=32, n_head=2, n_kv_head=2,
                                  block_pattern="T"), script).eval()
    docs = [{"id": "d1", "title": "Ada", "text": "Ada was born in Paris."}]
    eng = Engine(model, tok, tool=lambda query, row: tok.encode_documents(docs), max_tool_calls=2)
    prompt = tok.render_for_completion([{"role": "user", "content": "Where was Ada born?"}])
    eng.generate_batch([prompt], max_tokens=10, stop_tokens=[sp("<|assistant_end|>")])
    assert eng.queries == [["Ada", "Paris"]]


def test_the_copy_guard_allows_only_continuations_of_a_shown_copy(tok):
    """CopyGuard.allowed, case by case: what may start a copy, continue it, end it, cite, abstain, search."""
    from nanochat_core.data.world import ABSTAIN
    from nanochat_core.engine import CopyGuard
    g = CopyGuard(tok, tok.get_vocab_size())
    sp = tok.encode_special
    shown = g.text(tok.encode("Lima is in Peru. Lima Works was founded by Pubi Mapuvul."))

    def after(s, query=False, can_search=True):
        own = ([sp("<|search_start|>")] if query else []) + (tok.encode(s) if s else [])
        return g.allowed(shown, own, can_search)

    start = after("")
    assert sp("<|search_start|>") in start and sp("<|search_end|>") not in start and sp("<|assistant_end|>") not in start
    assert sp("<|search_start|>") not in after("", can_search=False)  # at the hop limit
    assert all(g.strs[i].lstrip() == "" or g.strs[i].lstrip() in shown or ABSTAIN.startswith(g.strs[i].lstrip())
               for i in start if i in g.strs)
    # a copy of "Pubi": may go on to "Pubi Mapuvul", may end (a word ends), may not become "Pube"
    for s in ("Pub", " Pub"):
        nxt = after(s)
        assert all(shown.find((s + g.strs[i]).lstrip()) >= 0 for i in nxt if i in g.strs and not g.strs[i].lstrip().startswith("["))
        assert not any((s + g.strs[i]).lstrip().startswith("Pube") for i in nxt if i in g.strs)
        assert any((s + g.strs[i]).lstrip().startswith("Pubi") for i in nxt if i in g.strs)
        assert sp("<|assistant_end|>") not in nxt  # "Pub" is half a word
    ended = after(" Pubi Mapuvul")
    assert sp("<|assistant_end|>") in ended and any(g.strs[i].lstrip().startswith("[") for i in ended if i in g.strs)
    cites = g.allowed(shown, tok.encode(" Pubi Mapuvul [1"), True)  # then only whole citations, and the end
    assert sp("<|assistant_end|>") not in cites and sp("<|search_end|>") not in cites  # "[1" is open
    assert all(set(g.strs[i]) <= set("]0123456789") for i in cites if i in g.strs)
    assert any(g.strs.get(i) == "]" for i in cites) and any(g.strs.get(i, "x").isdigit() for i in cites)
    assert any(g.strs.get(i, "x").isdigit() for i in g.allowed(shown, tok.encode(" Pubi Mapuvul ["), True))
    closed = g.allowed(shown, tok.encode(" Pubi Mapuvul [1]"), True)
    assert sp("<|assistant_end|>") in closed
    assert all(g.strs[i].lstrip().startswith("[") or not g.strs[i].strip() for i in closed if i in g.strs)  # no "[1]63"
    # a name is copied whole: "Pubi" may not end the answer (it goes on to " Mapuvul"), "Lima" may
    # (" is"); no copy starts inside a name ("Mapuvul"), one may start at "Lima Works"
    assert sp("<|assistant_end|>") not in after(" Pubi") and sp("<|search_end|>") not in after("Pubi", query=True)
    assert sp("<|assistant_end|>") in after(" Lima") and sp("<|assistant_end|>") in after(" Lima Works")
    assert after(" Mapuvul") == [] and after("Mapuvul", query=True) == [] and after(" Works") == []
    assert after(" Lima Works") != [] and after(" Pubi Mapuvul") != []
    for inner in ("Mapuvul", "Works"):  # the start set itself (not only the continuations) skips them
        assert not any(g.strs[i].lstrip() and inner.startswith(g.strs[i].lstrip()) for i in start if i in g.strs)
    # only a name is never cut: a copy ending in a small word, or a sentence's end, may end before a capital
    lower = g.text(tok.encode("Ada was born in Lima. Lima Works hired Ada in Peru"))
    assert sp("<|assistant_end|>") in g.allowed(lower, tok.encode(" born in"), True)
    assert sp("<|assistant_end|>") in g.allowed(lower, tok.encode(" Lima."), True)
    # a copy stays on one line: a documents block's next line ("[2] Lima...") is no part of it
    two = g.text(tok.encode("Ada lives in Lima.\n[2] Peru\nPeru is big."))
    assert not any("\n" in g.strs[i] for i in g.allowed(two, tok.encode(" Lima."), True) if i in g.strs)
    assert sp("<|assistant_end|>") in g.allowed(two, tok.encode(" Lima."), True)
    # a query: only copies, closed where a word ends
    q = after("Lima", query=True)
    assert sp("<|search_end|>") in q and sp("<|assistant_end|>") not in q
    assert sp("<|search_end|>") not in after("Lim", query=True) and sp("<|search_end|>") not in after("", query=True)
    # the abstention, though no document holds it
    assert sp("<|assistant_end|>") in after(" " + ABSTAIN)
    mid = after(" The sources do")
    assert any(ABSTAIN.startswith("The sources do" + g.strs[i]) for i in mid if i in g.strs)
