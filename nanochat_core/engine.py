"""Batched generation over the mixed KV/SSM cache, with a search-tool hook.

Prompts of different lengths are left-padded and prefilled in one forward pass; decoding
then feeds one token per row per step. The tool hook works like nanochat's calculator:
when a row closes a search call (<|search_end|>), the query text between the search
markers goes to `tool(query, row) -> list[int]`, and the returned tokens (a documents block)
are forced into that row one by one, with mask 0 because the model did not produce them.
Once a row has made `max_tool_calls` calls, the search markers are masked out of its
sampling: the model cannot search again and must answer.
After a generation, `engine.queries[b]` lists the queries row b wrote, in order (this is the
one place that reads search calls out of tokens), and `engine.limit_from[b]` says from which of
its tokens on the search markers were masked (None: never).
"""
from collections import deque

import torch

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


class Engine:
    def __init__(self, model, tokenizer=None, tool=None, max_tool_calls=None):
        self.model, self.tokenizer, self.tool = model, tokenizer, tool
        self.max_tool_calls = max_tool_calls  # REFRAG's follow-up searches; None = unlimited
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
        done = [False] * B
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
        for tokens, ms in self.generate(prompts, max_tokens, **kw):
            for b in range(B):
                if finished[b]:
                    continue
                if ms[b] == 1 and tokens[b] in stop:
                    finished[b] = True
                    continue
                out[b].append(tokens[b])
                masks[b].append(ms[b])
        self.finished = finished  # which rows ended on a stop token (the others ran out of tokens)
        return out, masks
