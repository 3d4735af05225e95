"""BPE tokenizer (trained with rustbpe, served with tiktoken) and conversation rendering.

One tokenizer serves every stage. Text from users and documents is always encoded as
ordinary text, so a document containing the literal "<|bos|>" cannot inject the token.
Conversations render to (ids, mask) where mask=1 marks exactly the tokens the assistant
produces itself: its search calls and its answer. Retrieved documents are tool output
and are never trained on.

The tokenizer is saved as one canonical JSON file (no pickle, no tiktoken cache):
    {"checksum", "format", "pattern", "special_tokens", "tokens": [base64 bytes by rank], "version"}
`Tokenizer.hash` is the sha256 of exactly those bytes, so a checkpoint can record which
tokenizer it was trained with.
"""
import base64
import json
import os
import warnings
from collections.abc import Mapping

import rustbpe
import tiktoken

from nanochat_core.common import atomic_write_bytes, read_bytes, sha256_bytes

SPECIAL_TOKENS = [
    "<|bos|>",  # every document / conversation starts with it
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|documents_start|>",  # retrieved sources, numbered [1] Title: text
    "<|documents_end|>",
    "<|search_start|>",  # the assistant's own search call (REFRAG)
    "<|search_end|>",
]

# GPT-4 style split, but numbers split into groups of 1-2 digits (as nanochat does):
# with a small vocabulary we don't want to spend merges on 3-digit numbers.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}"""
                 r"""| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")

FILE_FORMAT = "nanochat-rag-tokenizer"
FILE_VERSION = 1
ROLES = ("user", "assistant", "search", "documents")


class TokenizerError(ValueError):
    """A tokenizer file that is missing, corrupt, or from an incompatible version."""


def _canonical(obj) -> bytes:
    # One byte string per content: sorted keys, no whitespace, ASCII only, no trailing
    # newline (so any truncation leaves invalid JSON).
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# -----------------------------------------------------------------------------
# documents block (shared with the retriever tool at inference)

def _check_documents(docs, where="documents"):
    if not isinstance(docs, (list, tuple)):
        raise ValueError(f"{where}: 'documents' must be a list of {{id, title, text}} dicts, "
                         f"got {type(docs).__name__}")
    for j, d in enumerate(docs):
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}, document {j}: must be a dict with id, title, text; "
                             f"got {type(d).__name__}")
        if "text" not in d:
            raise ValueError(f"{where}, document {j}: has no 'text' (keys: {sorted(d)})")
        if not isinstance(d["text"], str):
            raise ValueError(f"{where}, document {j}: 'text' must be a str, got {type(d['text']).__name__}")
        title = d.get("title")
        if title is not None and not isinstance(title, str):
            raise ValueError(f"{where}, document {j}: 'title' must be a str, got {type(title).__name__}")


def format_documents(docs) -> str:
    """Numbered sources as the model sees them: "[1] Title: text\\n[2] Title: text\\n".

    Every source line ends with a newline; a document without a title renders as
    "[n] text". Answers cite sources by these numbers.
    """
    _check_documents(docs)
    parts = []
    for n, d in enumerate(docs, start=1):
        title = d.get("title") or ""
        parts.append(f"[{n}] {title}: {d['text']}\n" if title else f"[{n}] {d['text']}\n")
    return "".join(parts)


def _messages(conversation):
    if isinstance(conversation, Mapping):
        if "messages" not in conversation:
            raise ValueError(f"conversation dict has no 'messages' (keys: {sorted(conversation)})")
        messages = conversation["messages"]
    else:
        messages = conversation
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"conversation must be {{'messages': [...]}} or a list of messages, "
                         f"got {type(messages).__name__}")
    if not messages:
        raise ValueError("conversation is empty: it needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"message {i}: must be a dict with 'role', got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i}: unknown role {role!r}; expected one of {ROLES}")
        if role == "documents":
            if "documents" not in m:
                raise ValueError(f"message {i}: role 'documents' needs a 'documents' list")
            _check_documents(m["documents"], where=f"message {i}")
            lw = m.get("loss_weight", 0)
            if isinstance(lw, bool) or not isinstance(lw, (int, float)) or not 0 <= lw <= 1:
                raise ValueError(f"message {i}: documents 'loss_weight' must be a number in [0, 1], got {lw!r}")
        elif not isinstance(m.get("content"), str):
            raise ValueError(f"message {i}: role {role!r} needs 'content' as a str, "
                             f"got {type(m.get('content')).__name__}")
    return messages


# -----------------------------------------------------------------------------

class Tokenizer:
    """Byte-level BPE served by tiktoken, plus the special tokens of every stage."""

    def __init__(self, mergeable_ranks: dict, pattern: str, special_tokens: dict | None = None):
        n = len(mergeable_ranks)
        if special_tokens is None:
            special_tokens = {name: n + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.pattern = pattern
        self.mergeable_ranks = dict(mergeable_ranks)
        self.special_tokens = dict(special_tokens)
        self.enc = tiktoken.Encoding(name="nanochat-rag", pat_str=pattern,
                                     mergeable_ranks=self.mergeable_ranks,
                                     special_tokens=self.special_tokens)
        self.special_ids = set(self.special_tokens.values())
        self._bytes = None  # canonical file bytes, computed lazily

    # --- training / persistence ----------------------------------------------

    @classmethod
    def train(cls, text_iterator, vocab_size: int, pattern: str = SPLIT_PATTERN) -> "Tokenizer":
        """Train on an iterable of str. vocab_size counts 256 bytes + merges + special tokens."""
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must be an int >= {256 + len(SPECIAL_TOKENS)} "
                             f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size!r}")
        n_ranks = vocab_size - len(SPECIAL_TOKENS)
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(iter(text_iterator), n_ranks, pattern=pattern)
        ranks = {bytes(b): int(r) for b, r in bpe.get_mergeable_ranks()}
        if len(ranks) < n_ranks:
            # Too little text to find that many merges; the vocab is simply smaller.
            warnings.warn(f"tokenizer training found only {len(ranks) - 256} merges of the "
                          f"{n_ranks - 256} requested (too little text); vocab size is "
                          f"{len(ranks) + len(SPECIAL_TOKENS)}, not {vocab_size}", stacklevel=2)
        return cls(ranks, bpe.get_pattern())

    def to_bytes(self) -> bytes:
        if self._bytes is None:
            tokens = [None] * len(self.mergeable_ranks)
            for b, r in self.mergeable_ranks.items():
                tokens[r] = base64.b64encode(b).decode("ascii")
            body = {"format": FILE_FORMAT, "version": FILE_VERSION, "pattern": self.pattern,
                    "tokens": tokens, "special_tokens": self.special_tokens}
            body["checksum"] = sha256_bytes(_canonical(body))
            self._bytes = _canonical(body)
        return self._bytes

    @property
    def hash(self) -> str:
        """sha256 of the canonical saved bytes (equals sha256 of the file `save` writes)."""
        return sha256_bytes(self.to_bytes())

    def save(self, path):
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path) -> "Tokenizer":
        path = os.fspath(path)
        fix = ("delete it and retrain it with the pretrain stage (`dvc repro pretrain`), "
               "or restore it from the DVC cache with `dvc checkout`")
        data = read_bytes(path, TokenizerError, "tokenizer file", "does not exist; train it with the pretrain stage "
                          "(`dvc repro pretrain`) or restore it with `dvc checkout`")

        def bad(reason):
            return TokenizerError(f"tokenizer file {path} is corrupt or not a tokenizer ({reason}); {fix}")

        try:
            body = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad(f"not valid JSON: {e}") from None
        if not isinstance(body, dict) or body.get("format") != FILE_FORMAT:
            raise bad(f"missing 'format': {FILE_FORMAT!r}")
        if body.get("version") != FILE_VERSION:
            raise bad(f"format version {body.get('version')!r}, this code reads {FILE_VERSION}")
        checksum = body.pop("checksum", None)
        if checksum != sha256_bytes(_canonical(body)):
            raise bad("checksum does not match its content")
        pattern, tokens, specials = body.get("pattern"), body.get("tokens"), body.get("special_tokens")
        if not isinstance(pattern, str) or not isinstance(tokens, list) or not isinstance(specials, dict):
            raise bad("'pattern', 'tokens' or 'special_tokens' missing or of the wrong type")
        try:
            ranks = {base64.b64decode(t, validate=True): r for r, t in enumerate(tokens)}
        except (TypeError, ValueError) as e:
            raise bad(f"a token is not valid base64: {e}") from None
        if len(ranks) != len(tokens):
            raise bad("duplicate tokens")
        if any(ranks.get(bytes([i])) != i for i in range(256)):
            raise bad("the first 256 tokens must be the single bytes 0..255")
        expected = {name: len(tokens) + i for i, name in enumerate(SPECIAL_TOKENS)}
        if specials != expected:
            raise TokenizerError(f"tokenizer file {path} has special tokens {sorted(specials)} at other "
                                 f"ids than this code expects ({SPECIAL_TOKENS}); it was made by a "
                                 f"different version: {fix}")
        try:
            tok = cls(ranks, pattern, specials)
        except Exception as e:  # e.g. a pattern tiktoken's regex engine rejects
            raise bad(f"tiktoken cannot build it: {e}") from e
        return tok

    # --- encoding ---------------------------------------------------------------

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.special_tokens["<|bos|>"]

    def encode_special(self, name: str) -> int:
        try:
            return self.special_tokens[name]
        except KeyError:
            raise ValueError(f"unknown special token {name!r}; known: {SPECIAL_TOKENS}") from None

    def _id(self, tok):
        return tok if isinstance(tok, int) else self.encode_special(tok)

    def encode(self, text, prepend=None, append=None, num_threads: int = 8):
        """Encode text as ordinary text (special-token literals stay plain text).

        text: a str -> list[int], or a list of str -> list[list[int]].
        prepend/append: a special token name (e.g. "<|bos|>") or a token id.
        """
        pre = [] if prepend is None else [self._id(prepend)]
        post = [] if append is None else [self._id(append)]
        if isinstance(text, str):
            return pre + self.enc.encode_ordinary(text) + post
        if isinstance(text, (list, tuple)):
            batch = self.enc.encode_ordinary_batch(list(text), num_threads=num_threads)
            return [pre + ids + post for ids in batch]
        raise TypeError(f"encode expects a str or a list of str, got {type(text).__name__}")

    def __call__(self, *args, **kwargs):
        return self.encode(*args, **kwargs)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])

    def id_to_token(self, idx: int) -> str:
        return self.enc.decode([int(idx)])

    def token_byte_lengths(self) -> list:
        """Bytes per token id (0 for special tokens): for bits-per-byte evaluation."""
        out = [0] * self.get_vocab_size()
        for b, r in self.mergeable_ranks.items():
            out[r] = len(b)
        return out

    # --- conversations ----------------------------------------------------------

    def encode_documents(self, docs) -> list:
        """The documents block exactly as the renderer writes it (the engine forces these ids)."""
        return ([self.special_tokens["<|documents_start|>"]] + self.encode(format_documents(docs))
                + [self.special_tokens["<|documents_end|>"]])

    def _render(self, messages):
        S = self.special_tokens
        ids, mask = [S["<|bos|>"]], [0]

        def add(tokens, m):
            ids.extend(tokens)
            mask.extend([m] * len(tokens))

        turn_open = None  # index of the message that opened the current assistant turn
        for i, msg in enumerate(messages):
            role = msg["role"]
            if role == "user":
                if turn_open is not None:
                    raise ValueError(f"message {i}: user message inside the assistant turn opened at "
                                     f"message {turn_open}; that turn must end with an assistant message")
                add([S["<|user_start|>"], *self.encode(msg["content"]), S["<|user_end|>"]], 0)
            elif role == "documents":
                # Outside a turn: context given with the question. Inside: a search's tool output.
                # Either way the model reads it, never produces it; a loss_weight > 0 trains the
                # model to predict it as plain text too (stages.learn_documents says why).
                add(self.encode_documents(msg["documents"]), msg.get("loss_weight", 0))
            else:
                if turn_open is None:
                    add([S["<|assistant_start|>"]], 0)
                    turn_open = i
                # The assistant's text starts with a space, as a name does inside a document
                # (" Goraze" is one token there, "Goraze" is G|or|aze): copying a name from a
                # source is then copying its tokens, not respelling it. Decoders strip it.
                text = " " + msg["content"]
                if role == "search":
                    add([S["<|search_start|>"], *self.encode(text), S["<|search_end|>"]], 1)
                else:
                    add([*self.encode(text), S["<|assistant_end|>"]], 1)
                    turn_open = None
        return ids, mask, turn_open

    def render_conversation(self, conversation, max_tokens=None):
        """Render {"messages": [...]} (or a bare list) to (ids, mask); mask 1 = assistant's own tokens.

        Roles: user {content}, assistant {content} (the answer; closes the turn),
        search {content} (a search call inside the assistant turn),
        documents {documents: [{id, title, text}]}.
        """
        ids, mask, _ = self._render(_messages(conversation))
        if max_tokens is not None:
            if not isinstance(max_tokens, int) or max_tokens < 1:
                raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return ids, mask

    def render_for_completion(self, conversation) -> list:
        """Prompt ids for generation: the conversation, then <|assistant_start|>.

        The conversation must end with a user or documents message. If the last documents
        block is the output of a search inside an open assistant turn, the turn is already
        open and no <|assistant_start|> is appended: the model continues that turn.
        """
        messages = _messages(conversation)
        last = messages[-1]["role"]
        if last not in ("user", "documents"):
            raise ValueError(f"message {len(messages) - 1}: a conversation to complete must end with a "
                             f"user or documents message, not {last!r}")
        ids, _, turn_open = self._render(messages)
        if turn_open is None:
            ids.append(self.special_tokens["<|assistant_start|>"])
        return ids
