"""Real-text sources: Python's own documentation by default, or the user's files.

A source spec is a dict (one entry of params `documents.sources`):
    {"type": "python_docs", "max_chars": 300000}
    {"type": "jsonl",   "path": "data/my.jsonl", "text_field": "text", "title_field": "title", "id_field": "id"}
    {"type": "text",    "path": "notes.txt", "encoding": "utf-8", "split": "file" | "paragraph"}
    {"type": "dir",     "path": "docs/", "glob": "**/*", ...}   # .jsonl / .parquet / anything else as text
    {"type": "parquet", "path": "shards/" or "shard_00000.parquet", "text_field": "text"}
    {"type": "squad" | "hotpotqa", "path": ...}   QA datasets: see qa_sources.py
Every spec may also carry "name": the prefix of its document ids (default: the file's stem).

load_source(spec) -> (documents, stats). Documents follow the shared schema
{"id","title","text","source","metadata"}; `source` is "python_docs" or the file path.
Bad input raises SourceError (a ValueError) naming the file, the line or column where it
applies, and the fix. Rows that carry no text (blank JSONL lines, empty text, null parquet
values, empty files, hidden files in a directory) are skipped, counted by reason in
stats["skipped"], never dropped silently.

User JSONL is read by this module's own small reader rather than documents.load_documents:
a pretraining source is often {"text": ...} only, with no id, and names its text field
freely (`text_field`); load_documents rightly demands the full document schema.
"""
import importlib
import inspect
import itertools
import warnings
from pathlib import Path

from nanochat_core.common import jsonl_rows

SOURCE_KEYS = {
    "python_docs": {"type", "name", "max_chars"},
    "jsonl": {"type", "name", "path", "text_field", "title_field", "id_field"},
    "text": {"type", "name", "path", "encoding", "split"},
    "dir": {"type", "name", "path", "glob", "text_field", "title_field", "id_field", "encoding", "split"},
    "parquet": {"type", "name", "path", "text_field", "title_field", "id_field"},
    # QA datasets (nanochat_core/data/qa_sources.py): paragraphs into the KB, questions into data/qa
    "squad": {"type", "name", "path", "max_questions", "val_fraction", "test_fraction", "on_error"},
    "hotpotqa": {"type", "name", "path", "max_questions", "val_fraction", "test_fraction", "on_error"},
}
SOURCE_DEFAULTS = {"text_field": "text", "title_field": "title", "id_field": "id", "encoding": "utf-8",
                   "split": "file", "glob": "**/*", "max_chars": 300_000,
                   "max_questions": 0, "val_fraction": 0.1, "test_fraction": 0.2, "on_error": "raise"}
KEY_TYPES = {"type": str, "name": str, "path": str, "text_field": str, "title_field": str, "id_field": str,
             "encoding": str, "split": str, "glob": str, "max_chars": int, "max_questions": int,
             "val_fraction": (int, float), "test_fraction": (int, float), "on_error": str}
SPLITS = ("file", "paragraph")

# A fixed list, so the default corpus is the same for a given Python version.
PYTHON_DOC_MODULES = (
    "builtins", "string", "re", "textwrap", "difflib", "datetime", "calendar", "collections", "heapq",
    "bisect", "copy", "pprint", "enum", "math", "decimal", "fractions", "random", "statistics", "itertools",
    "functools", "operator", "pathlib", "os.path", "shutil", "glob", "fnmatch", "tempfile", "json", "csv",
    "hashlib", "secrets", "io", "time", "argparse", "logging", "threading", "queue", "subprocess", "sched",
    "contextlib", "abc", "dataclasses", "typing", "inspect", "unittest", "base64", "html", "urllib.parse",
    "uuid", "zipfile", "gzip", "shlex", "ipaddress", "struct", "codecs", "traceback", "warnings", "weakref",
    "types", "numbers", "array", "graphlib", "zlib", "tarfile", "configparser", "timeit", "tokenize", "ast",
)


class SourceError(ValueError):
    """A bad source: the message names the file (and line or column) and says what to fix."""


def validate_source_spec(spec, where="documents.sources[0]"):
    """A source spec with defaults filled; ValueError naming `where` for anything wrong."""
    if not isinstance(spec, dict):
        raise ValueError(  # noqa: TRY004 (params errors are ValueErrors naming the key path)
            f"{where}: a source must be a mapping like {{type: jsonl, path: ...}}, got {type(spec).__name__}")
    stype = spec.get("type")
    if stype not in SOURCE_KEYS:
        raise ValueError(f"{where}.type: unknown source type {stype!r}; valid types are {', '.join(SOURCE_KEYS)}")
    allowed = SOURCE_KEYS[stype]
    for k, v in spec.items():
        if k not in allowed:
            raise ValueError(f"{where}.{k}: unknown key for a {stype} source; valid keys are {', '.join(sorted(allowed))}")
        want = KEY_TYPES[k]
        if not isinstance(v, want) or isinstance(v, bool):
            name = "number" if isinstance(want, tuple) else want.__name__
            raise ValueError(f"{where}.{k}: expected {name}, got {type(v).__name__} ({v!r})")  # noqa: TRY004
    out = {k: SOURCE_DEFAULTS[k] for k in allowed if k in SOURCE_DEFAULTS}
    out.update(spec)
    if "path" in allowed and not out.get("path"):
        raise ValueError(f"{where}.path: a {stype} source needs a path")
    if out.get("split", "file") not in SPLITS:
        raise ValueError(f"{where}.split: must be one of {', '.join(SPLITS)}, got {out['split']!r}")
    for k in ("max_chars", "max_questions"):
        if out.get(k, 0) < 0:
            raise ValueError(f"{where}.{k}: must be >= 0, got {out[k]}")
    if "on_error" in out and out["on_error"] not in ("raise", "skip"):
        raise ValueError(f"{where}.on_error: must be raise or skip, got {out['on_error']!r}")
    if "val_fraction" in out and not (0 <= out["val_fraction"] and 0 <= out["test_fraction"]
                                      and out["val_fraction"] + out["test_fraction"] < 1):
        raise ValueError(f"{where}: val_fraction and test_fraction must be >= 0 and sum to less than 1, got "
                         f"{out['val_fraction']} and {out['test_fraction']}")
    if "encoding" in out:
        import codecs
        try:
            codecs.lookup(out["encoding"])
        except LookupError:
            raise ValueError(f"{where}.encoding: unknown encoding {out['encoding']!r}") from None
    return out


def new_stats(spec, path=None):
    return {"type": spec["type"], "name": spec.get("name"), "path": None if path is None else str(path),
            "files": 0, "documents": 0, "chars": 0, "skipped": {}}


def count_skip(stats, reason, n=1):
    stats["skipped"][reason] = stats["skipped"].get(reason, 0) + n


def _doc(doc_id, title, text, source, **meta):
    return {"id": doc_id, "title": title, "text": text, "source": source, "metadata": meta}


# ---- python_docs --------------------------------------------------------------------------
def python_docs(max_chars=300_000, name="python_docs"):
    """Python's installed documentation: the pydoc topics (language reference pages) and
    the docstrings of PYTHON_DOC_MODULES and their public classes and functions, taken
    alternately, until `max_chars` characters of text. Returns (docs, stats)."""
    stats = new_stats({"type": "python_docs", "name": name})
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some minimal Python builds leave pydoc_data out
        topics = {}
        count_skip(stats, "pydoc_topics_unavailable")
    topic_docs = [_doc(f"{name}:topic:{k}", k, topics[k].strip(), "python_docs", kind="topic")
                  for k in sorted(topics) if topics[k].strip()]
    api_docs = []
    for modname in PYTHON_DOC_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            count_skip(stats, "module_unavailable")
            continue
        items = [(modname, mod)] + [(f"{modname}.{k}", v) for k, v in sorted(vars(mod).items())
                                    if not k.startswith("_")]
        for qual, obj in items:
            if obj is not mod and not ((inspect.isclass(obj) or inspect.isroutine(obj))
                                       and getattr(obj, "__module__", None) == mod.__name__):
                continue  # re-exports and constants: documented where they are defined
            with warnings.catch_warnings():  # typing.io and friends warn when their docs are read
                warnings.simplefilter("ignore")
                doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else ""
            doc = inspect.cleandoc(doc) if doc.strip() else ""  # own docstring only, never inherited
            if not doc:
                continue
            api_docs.append(_doc(f"{name}:api:{qual}", qual, f"{qual}\n\n{doc}", "python_docs", kind="docstring"))
    docs, total = [], 0
    interleaved = [d for pair in itertools.zip_longest(topic_docs, api_docs) for d in pair if d is not None]
    for i, d in enumerate(interleaved):
        if total + len(d["text"]) > max_chars:
            count_skip(stats, "over_max_chars", len(interleaved) - i)  # the budget is spent: stop here
            break
        docs.append(d)
        total += len(d["text"])
    stats.update(documents=len(docs), chars=total)
    return docs, stats


# ---- files --------------------------------------------------------------------------------
def _missing(path, where):
    return SourceError(f"{where}: {path} does not exist (resolved to {Path(path).resolve()}); "
                       "fix the path in the source spec (relative paths start at the working directory)")


def _read_text(path, encoding):
    data = Path(path).read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise SourceError(
            f"{path}: not valid {encoding} (byte 0x{data[e.start]:02x} at offset {e.start}, line {line}); "
            f"re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path}`) or set "
            f"`encoding:` (e.g. latin-1) in its source spec") from None


def _label(spec, path):
    return spec.get("name") or Path(path).stem


def _one_file(spec, path, label, stats, kind):
    """(path, label, stats) of a single-file source, or an error saying why it isn't one."""
    path = Path(path or spec["path"])
    if not path.is_file():
        raise _missing(path, f"{kind} source") if not path.exists() else SourceError(
            f"{path}: is a directory; use a source of type dir for it")
    return path, label or _label(spec, path), stats if stats is not None else new_stats(spec, path)


def load_text(spec, path=None, label=None, rel=None, stats=None):
    path, label, stats = _one_file(spec, path, label, stats, "text")
    text = _read_text(path, spec.get("encoding", "utf-8"))
    stats["files"] += 1
    key = rel or path.name
    parts = [text] if spec.get("split", "file") == "file" else text.split("\n\n")
    docs = []
    for i, part in enumerate(parts):
        part = part.strip()
        if not part:
            count_skip(stats, "empty_file" if len(parts) == 1 else "empty_paragraph")
            continue
        doc_id = f"{label}:{key}" if len(parts) == 1 else f"{label}:{key}:{i}"
        docs.append(_doc(doc_id, path.stem if len(parts) == 1 else f"{path.stem} ({i + 1})", part, str(path)))
    stats["documents"] += len(docs)
    stats["chars"] += sum(len(d["text"]) for d in docs)
    return docs, stats


def load_jsonl(spec, path=None, label=None, rel=None, stats=None):
    path, label, stats = _one_file(spec, path, label, stats, "jsonl")
    tf, hf, idf = spec.get("text_field", "text"), spec.get("title_field", "title"), spec.get("id_field", "id")
    key = rel or path.name
    docs, seen = [], {}
    for line_no, row, err in jsonl_rows(path):
        where = f"{path}:{line_no}"
        if err and err[0] == "blank_line":
            count_skip(stats, "blank_line")
            continue
        if err:
            raise SourceError(err[1])
        if tf not in row:
            raise SourceError(f"{where}: no field {tf!r} (fields: {', '.join(sorted(row)) or 'none'}); "
                              "set text_field in the source spec to the field that holds the text")
        text = row[tf]
        if text is None or (isinstance(text, str) and not text.strip()):
            count_skip(stats, "empty_text")
            continue
        if not isinstance(text, str):
            raise SourceError(f"{where}: field {tf!r} must be a string, got {type(text).__name__}")
        title = row.get(hf) if isinstance(row.get(hf), str) else ""
        rid = row.get(idf)
        rid = str(rid) if rid is not None and not isinstance(rid, (dict, list)) else str(line_no)
        if rid in seen:
            raise SourceError(f"{where}: duplicate {idf!r} {rid!r} (first at line {seen[rid]}); ids must be unique")
        seen[rid] = line_no
        docs.append(_doc(f"{label}:{key}:{rid}", title, text.strip(), str(path), line=line_no))
    stats["files"] += 1
    stats["documents"] += len(docs)
    stats["chars"] += sum(len(d["text"]) for d in docs)
    return docs, stats


def load_parquet(spec, path=None, label=None, rel=None, stats=None):
    """One parquet file, or a directory of *.parquet shards (as nanochat stores its data)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path or spec["path"])
    stats = stats if stats is not None else new_stats(spec, path)
    if not path.exists():
        raise _missing(path, "parquet source")
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise SourceError(f"{path}: directory has no *.parquet files; point path at a parquet file or a "
                              "directory of parquet shards")
        docs = []
        for f in files:
            docs += load_parquet(spec, f, label or _label(spec, path), f.name, stats)[0]
        return docs, stats
    label = label or _label(spec, path)
    key = rel or path.name
    tf, hf, idf = spec.get("text_field", "text"), spec.get("title_field", "title"), spec.get("id_field", "id")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as e:  # ArrowInvalid for a file that is not parquet
        raise SourceError(f"{path}: not a readable parquet file ({e}); check the file or the source type") from None
    columns = pf.schema_arrow.names
    if tf not in columns:
        raise SourceError(f"{path}: no column {tf!r}; its columns are: {', '.join(columns)}; "
                          "set text_field in the source spec to the column that holds the text")
    cols = [c for c in (tf, hf, idf) if c in columns]
    docs, row = [], 0
    for batch in pf.iter_batches(columns=list(dict.fromkeys(cols))):
        data = batch.to_pydict()
        for i in range(batch.num_rows):
            text = data[tf][i]
            row += 1
            if text is None or (isinstance(text, str) and not text.strip()):
                count_skip(stats, "empty_text")
                continue
            if not isinstance(text, str):
                raise SourceError(f"{path}: column {tf!r} must hold strings, row {row - 1} has {type(text).__name__}")
            title = data[hf][i] if hf in data and isinstance(data[hf][i], str) else ""
            rid = data[idf][i] if idf in data and data[idf][i] is not None else row - 1
            docs.append(_doc(f"{label}:{key}:{rid}", title, text.strip(), str(path), row=row - 1))
    stats["files"] += 1
    stats["documents"] += len(docs)
    stats["chars"] += sum(len(d["text"]) for d in docs)
    return docs, stats


def load_dir(spec):
    path = Path(spec["path"])
    if not path.exists():
        raise _missing(path, "dir source")
    if not path.is_dir():
        raise SourceError(f"{path}: is not a directory; use a source of type text, jsonl or parquet for a file")
    stats = new_stats(spec, path)
    label = _label(spec, path)
    files = []
    for p in sorted(path.glob(spec.get("glob", "**/*"))):
        if not p.is_file():
            continue
        if any(part.startswith(".") for part in p.relative_to(path).parts):
            count_skip(stats, "hidden_file")  # .gitignore, editor swap files, ...
            continue
        files.append(p)
    if not files:
        raise SourceError(f"{path}: directory has no files matching {spec.get('glob', '**/*')!r}; "
                          "add .txt/.md/.jsonl/.parquet files or change glob in the source spec")
    docs = []
    for p in files:
        rel = p.relative_to(path).as_posix()
        loader = {".jsonl": load_jsonl, ".parquet": load_parquet}.get(p.suffix.lower(), load_text)
        docs += loader(spec, p, label, rel, stats)[0]
    return docs, stats


def load_source(spec, where="documents.sources[0]"):
    """Loads one source spec -> (docs, stats). See the module docstring."""
    spec = validate_source_spec(spec, where)
    stype = spec["type"]
    if stype == "python_docs":
        return python_docs(spec["max_chars"], spec.get("name") or "python_docs")
    return {"jsonl": load_jsonl, "text": load_text, "dir": load_dir, "parquet": load_parquet}[stype](spec)
