"""Documents: the schema every stage shares, a validating JSONL loader, and chunking.

A document is a plain dict: {"id", "title", "text", "source", "metadata"}.
The loader also accepts the seeds' `content` (for `text`) and BEIR's `_id` (for `id`).

Nothing is dropped silently. With on_error="raise" (the default) the first bad row raises
DocumentError naming the file and line. With on_error="skip" bad rows are skipped, counted
by reason in a LoadReport, and a one-line summary is logged.
"""
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from nanochat_core.common import atomic_write_text, jsonl_rows

log = logging.getLogger(__name__)

# A document bigger than this is almost surely a mistake (a whole dump in one row). We
# refuse it with its size rather than truncate it; split it first (chunk_documents).
MAX_DOC_CHARS = 10_000_000
KNOWN_FIELDS = ("id", "_id", "title", "text", "content", "source", "metadata")


class DocumentError(ValueError):
    """A bad document row; the message names the file and line and says what to fix."""


@dataclass
class LoadReport:
    path: str
    loaded: int = 0
    skipped: dict = field(default_factory=dict)  # reason -> count
    examples: list = field(default_factory=list)  # first few skip messages, for the log

    @property
    def num_skipped(self):
        return sum(self.skipped.values())

    def add_skip(self, reason, message):
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(message)

    def summary(self):
        if not self.skipped:
            return f"{self.path}: loaded {self.loaded} documents"
        parts = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items()))
        return f"{self.path}: loaded {self.loaded} documents, skipped {self.num_skipped} ({parts})"


def iter_jsonl(path):
    """Yields (line_no, dict) for each row of a JSONL file; raises DocumentError on a bad line."""
    for line_no, obj, err in jsonl_rows(path):
        if err and err[0] != "blank_line":
            raise DocumentError(err[1])
        if obj is not None:
            yield line_no, obj


def normalize_document(obj, where="<document>"):
    """One raw row -> a document dict. Raises DocumentError (with `where` and a .reason)."""
    def fail(reason, msg):
        e = DocumentError(f"{where}: {msg}")
        e.reason = reason
        raise e

    if "id" in obj and "_id" in obj and obj["id"] != obj["_id"]:
        fail("wrong_type", "has both 'id' and '_id' with different values; keep one")
    if "text" in obj and "content" in obj:
        fail("wrong_type", "has both 'text' and 'content'; keep one")
    doc_id = obj.get("id", obj.get("_id"))
    text = obj.get("text", obj.get("content"))
    if doc_id is None:
        fail("missing_field", "missing field 'id' (or BEIR's '_id')")
    if not isinstance(doc_id, str):
        # ids are strings everywhere (BEIR qrels, citations); an int id would compare unequal to "12"
        fail("wrong_type", f"field 'id' must be a string, got {type(doc_id).__name__} ({doc_id!r}); quote it")
    if not doc_id.strip():
        fail("missing_field", "field 'id' is empty")
    if text is None:
        fail("missing_field", "missing field 'text' (or 'content')")
    if not isinstance(text, str):
        fail("wrong_type", f"field 'text' must be a string, got {type(text).__name__}")
    if not text.strip():
        fail("empty_text", f"document {doc_id!r} has empty text")
    if len(text) > MAX_DOC_CHARS:
        fail("too_large", f"document {doc_id!r} has {len(text):,} characters (limit {MAX_DOC_CHARS:,}); "
             "split it into smaller documents before loading")
    title = obj.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        fail("wrong_type", f"field 'title' must be a string, got {type(title).__name__}")
    source = obj.get("source", "")
    if source is None:
        source = ""
    if not isinstance(source, str):
        fail("wrong_type", f"field 'source' must be a string, got {type(source).__name__}")
    metadata = obj.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        fail("wrong_type", f"field 'metadata' must be an object, got {type(metadata).__name__}")
    # Unknown top-level fields are kept, inside metadata, rather than dropped.
    extra = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
    if extra:
        metadata = {**extra, **metadata}
    return {"id": doc_id, "title": title, "text": text, "source": source, "metadata": metadata}


def load_documents(path, on_error="raise", return_report=False):
    """Loads and validates a JSONL file of documents.

    on_error="raise": the first bad row raises DocumentError naming the file and line.
    on_error="skip": bad rows (malformed JSON, invalid UTF-8, missing or wrongly typed fields,
    empty text, too-large text, duplicate ids) are skipped and counted; the counts are logged
    and returned in a LoadReport when return_report=True. For a duplicate id the first wins.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"documents file {path} does not exist")
    report = LoadReport(path=str(path))
    docs, first_line = [], {}
    for line_no, obj, err in jsonl_rows(path):
        if err and err[0] == "blank_line":
            continue  # a trailing newline is not a row
        reason, msg = err or (None, None)
        where = f"{path}:{line_no}"
        if reason is None:
            try:
                doc = normalize_document(obj, where)
                if doc["id"] in first_line:
                    reason = "duplicate_id"
                    msg = (f"{where}: duplicate id {doc['id']!r} (first seen at line {first_line[doc['id']]}); "
                           "ids must be unique")
            except DocumentError as e:
                reason, msg = e.reason, str(e)
        if reason is not None:
            if on_error == "raise":
                raise DocumentError(msg)
            report.add_skip(reason, msg)
            continue
        first_line[doc["id"]] = line_no
        docs.append(doc)
    report.loaded = len(docs)
    if report.skipped:
        log.warning("%s; first: %s", report.summary(), report.examples[0])
    return (docs, report) if return_report else docs


def validate_documents(docs, where="documents"):
    """Normalizes in-memory documents (same rules as the loader) and checks ids are unique."""
    out, seen = [], set()
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise DocumentError(f"{where}[{i}]: expected a dict, got {type(d).__name__}")
        doc = normalize_document(d, f"{where}[{i}]")
        if doc["id"] in seen:
            raise DocumentError(f"{where}[{i}]: duplicate id {doc['id']!r}; ids must be unique")
        seen.add(doc["id"])
        out.append(doc)
    return out


def write_documents(path, docs):
    """Writes documents as JSONL, atomically (a killed write leaves the old file)."""
    lines = []
    for d in docs:
        row = {"id": d["id"], "title": d.get("title", ""), "text": d["text"],
               "source": d.get("source", ""), "metadata": d.get("metadata", {})}
        lines.append(json.dumps(row, ensure_ascii=False, sort_keys=True))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


_WORD = re.compile(r"\S+")


def chunk_documents(docs, max_words=200, overlap=50):
    """Splits long documents into overlapping windows of at most `max_words` words.

    A document that fits keeps its id; otherwise chunk i gets id f"{id}#{i}". Every chunk's
    metadata holds "parent_id" and "chunk" so a hit maps back to its document. Chunk text is
    a slice of the original text, so whitespace and newlines inside a chunk are preserved.
    """
    if max_words < 1 or not (0 <= overlap < max_words):
        raise ValueError(f"need max_words >= 1 and 0 <= overlap < max_words, got {max_words}, {overlap}")
    out = []
    stride = max_words - overlap
    for d in docs:
        spans = [m.span() for m in _WORD.finditer(d["text"])]
        starts = [0] if len(spans) <= max_words else list(range(0, len(spans) - overlap, stride))
        for i, s in enumerate(starts):
            window = spans[s:s + max_words]
            text = d["text"][window[0][0]:window[-1][1]] if window else d["text"]
            meta = {**d.get("metadata", {}), "parent_id": d["id"], "chunk": i}
            out.append({"id": d["id"] if len(starts) == 1 else f"{d['id']}#{i}", "title": d.get("title", ""),
                        "text": text, "source": d.get("source", ""), "metadata": meta})
    return out


def parent_id(chunk):
    """The id of the document a chunk came from (the chunk's own id for an unchunked doc)."""
    return chunk.get("metadata", {}).get("parent_id", chunk["id"])
