"""Batched generation over the mixed KV/SSM cache, with a search-tool hook.

Prompts of different lengths are left-padded and prefilled in one forward pass; decoding
then feeds one token per row per step. The tool hook works like nanochat's calculator:
when a row closes a search call (<|search_end|>), the query text between the search
markers goes to `tool(query, row) -> list[int]`, and the returned tokens (a documents block)
are forced into that row one by one, with mask 0 because the model did not produce them.
Once a row has made `max_tool_calls` calls, the search markers are masked out of its
sampling: the model cannot search again and must answer.
With copy=True (RAG and REFRAG answers), every search query and every answer is copied from
the text the row was shown (CopyGuard): sampling is limited to tokens that continue such a copy.
After a generation, `engine.queries[b]` lists the queries row b wrote, in order (this is the
one place that reads search calls out of tokens), and `engine.limit_from[b]` says from which of
its tokens on the search markers were masked (None: never), and `engine.allowed_at[b]` maps
the index of each token the copy guard constrained to the ids it allowed (RL scores that policy).
"""
import re
from collections import deque

import torch

from nanochat_core.data.world import ABSTAIN
from nanochat_core.model.cache import InferenceCache

# What a row at its hop limit may not sample (RL's loss masks the same tokens: rl.policy_logprobs).
LIMIT_MASKED = ("<|search_start|>", "<|search_end|>")


def sample_next(logits, temperature=1.0, top_k=None, generator=None):
    """logits: (B, V) -> (B,) token ids. temperature 0 is greedy (deterministic)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _word_start(text, p):
    """Whether a copy may start at text[p]: a word starts there, and it does not go on a name
    (capitalized words in a row, "Pubi Mapuvul"), so no copy is the back half of a name."""
    if p == 0:
        return True
    if text[p - 1].isalnum():
        return False
    if text[p - 1] == " " and p >= 2 and text[p - 2].isalnum() and text[p].isupper():
        q = p - 2
        while q > 0 and text[q - 1].isalnum():
            q -= 1
        return not text[q].isupper()
    return True


def _at_word(text, w):
    """The two characters that follow each occurrence of w in text where a copy may start ("" at
    the end of the text)."""
    out, p = set(), text.find(w)
    while p != -1:
        if _word_start(text, p):
            out.add(text[p + len(w):p + len(w) + 2])
        p = text.find(w, p + 1)
    return out


def _ends(v, after):
    """Whether a copy v may end before `after` (what follows it in the shown text): where a word
    ends, but not inside a name (a capitalized word before " Mapuvul": "Pubi" alone is a cut name)."""
    if after and after[0].isalnum():
        return False
    return not (v[-1:].isalnum() and v.split()[-1][0].isupper() and after[:1] == " " and after[1:2].isupper())


_CLOSED = r"(\s*\[\d+\])*\s*"  # "[1][3] ", "": citations an answer may end with
_CITES = re.compile(_CLOSED + r"(\[\d*)?")  # also " [2] [4": what an answer's tail may be while it is written


class CopyGuard:
    """Which tokens may come next so that a search query, or an answer, stays a copy of text the
    model was shown (the question and every documents block) that starts and ends at word
    boundaries; an answer may also be the abstention, then only its citations ("[2]") and the end.
    Special tokens read as a NUL character, so no copy runs from one message into the next.

    Why: a tiny model reads the right name and drifts while copying it (it searched "Pube Fagon"
    for "Pubi Mapuvul", shown beside "Tofe Fagon"): a held-out person's name is 6-8 short tokens
    that occur nowhere in pretraining. Measured on the default's REFRAG warm-ups, greedy, every
    question, guard off -> on: val (all 163) 0.742 -> 0.779 (world 1337) and 0.687 -> 0.755
    (world 2027); test 2-hop 0.613 -> 0.713 and 0.600 -> 0.733 (15 and 20 questions gained, none
    lost), 3-hop 0.625 -> 0.696 and 0.473 -> 0.589; unanswerable 1.000 -> 0.960 and 0.973 ->
    0.960 (a search now reaches a founder whose birth year is missing, and the model answers a
    year read off another document: inference.ground's check that the answer's document names
    the last query was added for that).

    A copy also never cuts a name (capitalized words in a row): it may not end at "Bosen" when
    the shown text goes on "Bosen Buka", nor start at "Buka"; it stays on one line (one
    document), and citations are whole "[n]"s. Why: the guarded model still cut names ("Bosen"
    for "Bosen Buka", "Nutar" for "Nutar Lotasa") and ran a copy into the next document's
    label ("Kodan.\n[3]63"). Val (all 163, greedy), default warm-ups: 0.779 -> 0.791 (world
    1337) and 0.761 -> 0.779 (world 2027), no type lower; then on test (`dvc repro` at
    3669f74) the warm-ups' 2-hop 0.713 -> 0.720 and 0.733 -> 0.747."""

    def __init__(self, tokenizer, vocab_size):
        self.specials = set(tokenizer.special_ids)
        self.strs = {i: tokenizer.decode([i]) for i in range(vocab_size) if i not in self.specials}
        self.longest = max(len(s) for s in self.strs.values())
        self.by_first = {}
        for i, s in self.strs.items():
            if s:
                self.by_first.setdefault(s[0], []).append(i)
        self.citing = [i for i, s in self.strs.items() if s and set(s) <= set("[]0123456789 ")]  # "[2]", " [1][3]"
        self.cite = [i for i in self.citing if self.strs[i].lstrip().startswith("[")]
        self.spaces = [i for i, s in self.strs.items() if s and not s.strip(" ")]
        # A copy stays inside one line (one document) and one message (specials read as NUL; so does token 0).
        self.breaks = {i for i, s in self.strs.items() if "\n" in s or "\x00" in s}
        self.abstain_start = [i for i, s in self.strs.items() if s.lstrip() and ABSTAIN.startswith(s.lstrip())]
        self.search_start = tokenizer.encode_special("<|search_start|>")
        self.search_end = tokenizer.encode_special("<|search_end|>")
        self.end = tokenizer.encode_special("<|assistant_end|>")
        self.reset()

    def reset(self):
        """Forget the word starts of earlier texts (the engine calls this once per generation)."""
        self._starts = {}

    def text(self, ids):
        return "".join(self.strs.get(i, "\x00") for i in ids)

    def allowed(self, shown, own, can_search):
        """The ids allowed after `own` (the row's tokens since the last forced block) given
        `shown` (self.text of everything before them)."""
        query = bool(own) and own[0] == self.search_start
        u = self.text(own[1:] if query else own)
        if not query and "[" in u:  # the citations: only whole "[n]"s and spaces, then the end
            c = u[u.index("["):]
            return [i for i in self.citing if _CITES.fullmatch(c + self.strs[i])] + \
                [self.end] * bool(re.fullmatch(_CLOSED, c))
        w = u.lstrip(" ")
        if not w:  # a copy starts: any token that begins a word of the shown text
            if shown not in self._starts:
                at = {shown[p:p + n] for p in range(len(shown)) if _word_start(shown, p)
                      for n in range(1, self.longest + 1)}
                self._starts[shown] = self.spaces + [i for i, s in self.strs.items()
                                                     if s.strip() and s.lstrip(" ") in at and i not in self.breaks]
            out = list(self._starts[shown])
            if not query:
                out += self.abstain_start
                if can_search and not own:
                    out.append(self.search_start)
            return out
        nxt = _at_word(shown, w)
        out = [i for c in {f[:1] for f in nxt} if c for i in self.by_first.get(c, ())
               if i not in self.breaks and _at_word(shown, w + self.strs[i])]
        v = w.rstrip()  # a copy ends where a word does (a space before the citation is no part of it)
        ends = v == ABSTAIN or any(_ends(v, f) for f in (nxt if v == w else _at_word(shown, v)))
        if query:
            return out + [self.search_end] * ends
        if ABSTAIN.startswith(w) and len(w) < len(ABSTAIN):
            out += [i for i in self.by_first.get(ABSTAIN[len(w)], ()) if ABSTAIN.startswith(w + self.strs[i])]
        return out + (self.cite + [self.end]) * ends


class Engine:
    def __init__(self, model, tokenizer=None, tool=None, max_tool_calls=None, copy=False):
        self.model, self.tokenizer, self.tool = model, tokenizer, tool
        self.max_tool_calls = max_tool_calls  # REFRAG's follow-up searches; None = unlimited
        if copy and tokenizer is None:
            raise ValueError("Engine(copy=True) needs the tokenizer to read what the model was shown")
        self.guard = CopyGuard(tokenizer, model.config.vocab_size) if copy else None
        if tool is not None:
            if tokenizer is None:
                raise ValueError("Engine(tool=...) needs the tokenizer to find the search-call tokens")
            self.search_start = tokenizer.encode_special("<|search_start|>")
            self.search_end = tokenizer.encode_special("<|search_end|>")
            self.limit_masked = [tokenizer.encode_special(t) for t in LIMIT_MASKED]

    @torch.no_grad()
    def generate(self, prompts, max_tokens, temperature=0.0, top_k=None, seed=0, stop_tokens=()):
        """Stream one step at a time: yields (tokens, masks), lists of length B with this
        step's token and mask for every row (rows already stopped repeat their last token with
        mask 0). A row stops at a stop token or after max_tokens tokens of its own since its
        last tool call (so each search query and the answer get max_tokens apiece, and an
        answer after no search gets exactly what a tool-less engine gives it); forced tool
        output does not count (the cache grows to hold it)."""
        model = self.model
        device = next(model.parameters()).device
        B = len(prompts)
        if B == 0 or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (start it with <|bos|>)")
        P = max(len(p) for p in prompts)
        idx = torch.zeros(B, P, dtype=torch.long, device=device)
        valid = torch.zeros(B, P, dtype=torch.bool, device=device)
        for b, p in enumerate(prompts):
            idx[b, P - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
            valid[b, P - len(p):] = True
        cache = InferenceCache(model, B, P + max_tokens)
        cache.offset = (P - valid.sum(1)).to(device)
        logits = model(idx, valid=valid, cache=cache)[:, -1]
        gen = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
        stop = set(stop_tokens)
        forced = [deque() for _ in range(B)]
        history = [list(p) for p in prompts]  # for reading back search queries
        own_from = [len(p) for p in prompts]  # where each row's own text began (after the last forced token)
        calls = [0] * B
        self.queries = [[] for _ in range(B)]
        # Per row, the index (among its generated tokens) of the first token sampled with the search
        # markers masked out, None while it has not happened: RL's loss must score that policy.
        self.limit_from = [None] * B
        self.allowed_at = [{} for _ in range(B)]
        if self.guard:
            self.guard.reset()
            self._shown = {}  # row -> (own_from, the text it was shown), recomputed after each forced block
        done = self.done = [False] * B  # generate_batch reads it: a stopped row's later tokens are padding
        last = [0] * B
        own = [0] * B  # tokens each row sampled itself since its last tool call
        while not all(done):
            active = [b for b in range(B) if not done[b]]
            width = min((len(forced[b]) for b in active), default=0)
            if width >= 2:
                # Every live row is inside a forced documents block: feed the common part in
                # one forward pass instead of token by token (rows usually search in step).
                cols = []
                for _ in range(width):
                    tokens = [forced[b].popleft() if not done[b] else last[b] for b in range(B)]
                    for b in active:
                        history[b].append(tokens[b])
                        last[b] = tokens[b]
                        own_from[b] = len(history[b])
                    cols.append(tokens)
                    yield tokens, [0] * B
                logits = model(torch.tensor(cols, device=device).T, cache=cache)[:, -1]
                continue
            if self.tool is not None and self.max_tool_calls is not None:
                spent = [b for b in active if calls[b] >= self.max_tool_calls]
                if spent:  # at the hop limit: no search can start (or close) in these rows
                    logits = logits.clone()
                    for t in self.limit_masked:
                        logits[spent, t] = float("-inf")
                    for b in spent:
                        if self.limit_from[b] is None and not forced[b]:
                            self.limit_from[b] = len(history[b]) - len(prompts[b])
            if self.guard:
                logits = self._guard(logits, active, forced, history, own_from, calls, prompts)
            sampled = sample_next(logits, temperature, top_k, gen).tolist()
            tokens, masks = [], []
            for b in range(B):
                if done[b]:
                    tokens.append(last[b])
                    masks.append(0)
                    continue
                if forced[b]:
                    tok, m = forced[b].popleft(), 0
                else:
                    tok, m = sampled[b], 1
                tokens.append(tok)
                masks.append(m)
                history[b].append(tok)
                if m == 0:
                    own_from[b] = len(history[b])
                last[b] = tok
                own[b] += m
                if m == 1 and (tok in stop or own[b] >= max_tokens):
                    done[b] = True
                    forced[b].clear()
                elif m == 1 and self.tool is not None and tok == self.search_end:
                    forced[b].extend(self._call_tool(history[b], own_from[b], b, self.queries[b]))
                    calls[b] += 1
                    own[b] = 0
            yield tokens, masks
            if all(done):
                return
            logits = model(torch.tensor(tokens, device=device)[:, None], cache=cache)[:, -1]

    def _guard(self, logits, active, forced, history, own_from, calls, prompts):
        logits = logits.clone()
        for b in active:
            if forced[b]:
                continue
            if self._shown.get(b, (None,))[0] != own_from[b]:
                self._shown[b] = (own_from[b], self.guard.text(history[b][:own_from[b]]))
            can_search = self.tool is not None and (self.max_tool_calls is None or calls[b] < self.max_tool_calls)
            ok = self.guard.allowed(self._shown[b][1], history[b][own_from[b]:], can_search)
            self.allowed_at[b][len(history[b]) - len(prompts[b])] = ok
            mask = torch.full_like(logits[b], float("-inf"))
            mask[ok] = 0.0
            logits[b] += mask
        return logits

    def _call_tool(self, history, own_from, row, queries):
        # The query is what the model wrote since its last <|search_start|>, never reaching back
        # past its own text into a forced documents block: a search_end without a start searches
        # for what the model wrote since the last block (the prompt or the documents).
        starts = [i for i in range(own_from, len(history) - 1) if history[i] == self.search_start]
        begin = starts[-1] + 1 if starts else own_from
        query = self.tokenizer.decode(history[begin:-1]).strip()
        queries.append(query)
        return list(self.tool(query, row))

    def generate_batch(self, prompts, max_tokens, **kw):
        """Run to completion. Returns (tokens, masks) per row, without the prompt and without
        the final stop token; self.finished[b] says whether row b reached a stop token."""
        stop = set(kw.get("stop_tokens", ()))
        B = len(prompts)
        out = [[] for _ in range(B)]
        masks = [[] for _ in range(B)]
        finished = [False] * B
        stopped = [False] * B  # a row out of tokens repeats its last one with mask 0 until every row is done
        for tokens, ms in self.generate(prompts, max_tokens, **kw):
            for b in range(B):
                if stopped[b]:
                    continue
                stopped[b] = self.done[b]
                if ms[b] == 1 and tokens[b] in stop:
                    finished[b] = True
                    continue
                out[b].append(tokens[b])
                masks[b].append(ms[b])
        self.finished = finished  # which rows ended on a stop token (the others ran out of tokens)
        return out, masks
