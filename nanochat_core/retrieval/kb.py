"""The knowledge base on disk: documents plus one index per retriever, under a manifest.

    DIR/manifest.json      format version, document count and hash, each retriever's config,
                           the embedding model (name + weights hash), sha256 of every file
    DIR/documents.jsonl    the documents (the schema of nanochat_core.data.documents)
    DIR/<retriever>/...    each retriever's index files (.npy, .npz, .json, .faiss; never pickle)

Loading verifies the manifest and every file's hash, so a truncated, edited or half-copied
KB is refused with a message saying how to fix it, never half-used. Saving writes a complete
new directory beside the old one and swaps it in, so a crash leaves the old KB intact.
"""
import json
import shutil
import tempfile
import time
from pathlib import Path

from nanochat_core.common import atomic_write_json, sha256_file
from nanochat_core.data.documents import load_documents, validate_documents, write_documents
from nanochat_core.retrieval import load_retriever, make_retriever
from nanochat_core.retrieval.hybrid import HybridRetriever

FORMAT = "nanochat-kb"
FORMAT_VERSION = 1
ALL_RETRIEVERS = ("tfidf", "bm25", "dense")


class KBError(ValueError):
    """A KB that cannot be used as it is; the message says how to fix it."""


def _rebuild_hint(dir):
    return f"rebuild it with `nanochat kb build --documents F.jsonl --output {dir}`"


class KnowledgeBase:
    def __init__(self, dir, docs, retrievers, config):
        self.dir = Path(dir) if dir is not None else None
        self.docs = docs
        self.by_id = {d["id"]: d for d in docs}
        self.retrievers = retrievers  # {name: retriever}, in build order
        self.config = config  # {"bm25": {...}, "dense": {...}, "hybrid": {...}}

    # ----------------------------------------------------------------------------- build/load

    @classmethod
    def build(cls, docs, out_dir, retrievers=("bm25", "dense"), config=None):
        """Indexes `docs` with each named retriever ("all" = tfidf, bm25, dense) and saves to out_dir
        (out_dir None: an in-memory KB, nothing written).

        config (all optional): {"bm25": {"k1": 1.2, ...}, "tfidf": {...}, "dense": {"model": ...,
        "index": "flat"|"hnsw"|"ivf", ...}, "hybrid": {"retrievers": [...], "weights": {...}, "k_rrf": 60}}
        """
        if isinstance(retrievers, str):
            retrievers = ALL_RETRIEVERS if retrievers == "all" else [r for r in retrievers.split(",") if r.strip()]
        retrievers = list(dict.fromkeys(r.strip() for r in retrievers))
        bad = [r for r in retrievers if r not in ALL_RETRIEVERS]
        if bad or not retrievers:
            raise ValueError(f"a KB holds retrievers from {list(ALL_RETRIEVERS)} (hybrid fuses them at query "
                             f"time); got {bad or retrievers}")
        out = Path(out_dir) if out_dir is not None else None
        if out is not None:
            _check_target(out)  # before indexing, which may take minutes
        config = dict(config or {})
        docs = validate_documents(docs)
        if not docs:
            raise ValueError(f"no documents to build the KB at {out} from")
        built = {}
        for name in retrievers:
            built[name] = make_retriever(name, config).index(docs)
        kb = cls(out, docs, built, config)
        if out is not None:
            kb.save()
        return kb

    @classmethod
    def load(cls, dir, embedding_model=None, verify=True):
        """Opens a KB. Refuses a missing or corrupted file, an unknown format, or (with
        `embedding_model`) a KB whose dense index came from another model. A bm25-only KB
        never loads the embedding model."""
        dir = Path(dir)
        manifest = read_manifest(dir)
        files = manifest["files"]
        missing = [f for f in files if not (dir / f).is_file()]
        if missing:
            raise KBError(f"KB at {dir} is missing {len(missing)} file(s) ({', '.join(missing[:3])}); "
                          f"{_rebuild_hint(dir)}")
        if verify:
            bad = [f for f, h in files.items() if sha256_file(dir / f) != h]
            if bad:
                raise KBError(f"KB at {dir} has corrupted file(s) {', '.join(bad[:3])} (sha256 differs from "
                              f"manifest.json); {_rebuild_hint(dir)}")
        docs = load_documents(dir / "documents.jsonl")
        if len(docs) != manifest["num_documents"]:
            raise KBError(f"KB at {dir} lists {manifest['num_documents']} documents in manifest.json but "
                          f"documents.jsonl has {len(docs)}; {_rebuild_hint(dir)}")
        retrievers = {}
        for name, entry in manifest["retrievers"].items():
            if name == "dense":
                from nanochat_core.retrieval.dense import check_model
                # Checked here, from the manifest, before anything is loaded.
                check_model(entry["embedding_model"], embedding_model, f"KB at {dir}")
            retrievers[name] = load_retriever(name, dir / name, embedding_model=embedding_model)
            if retrievers[name].ids != [d["id"] for d in docs]:
                raise KBError(f"KB at {dir}: the {name} index does not cover documents.jsonl; {_rebuild_hint(dir)}")
        return cls(dir, docs, retrievers, manifest.get("config", {}))

    def save(self, dir=None):
        """Writes the whole KB to a fresh directory beside the target, then swaps it in."""
        target = Path(dir) if dir is not None else self.dir
        if target is None:
            raise ValueError("this KB has no directory; pass save(dir)")
        _check_target(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.new-"))
        tmp.chmod(0o755)  # mkdtemp makes it private; a KB is a shared artifact
        try:
            write_documents(tmp / "documents.jsonl", self.docs)
            entries = {}
            for name, r in self.retrievers.items():
                r.save(tmp / name)
                entries[name] = {"config": r.config()}
                if name == "dense":
                    entries[name]["embedding_model"] = r.model_info
            files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "num_documents": len(self.docs),
                "documents_sha256": files["documents.jsonl"],
                "retrievers": entries,
                "config": self.config,
                "files": files,
                "versions": _versions(self.retrievers),
            }
            atomic_write_json(tmp / "manifest.json", manifest)
            old = None
            if target.exists():
                old = target.parent / f".{target.name}.old-{time.time_ns()}"
                target.rename(old)
            tmp.rename(target)
            if old is not None:
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.dir = target

    # ------------------------------------------------------------------------------- queries

    def search(self, queries, k=5, retriever="hybrid"):
        """queries: list of strings -> one [Hit(doc_id, score), ...] per query, best first."""
        if isinstance(queries, str):
            raise TypeError("search takes a list of queries; wrap a single query as [query]")
        return self._retriever(retriever).search(list(queries), k)

    def _retriever(self, name):
        if name == "hybrid":
            h = self.config.get("hybrid", {})
            # bm25 + dense when the KB has both (the fusion the benchmarks measure), else all it has.
            default = [n for n in ("bm25", "dense") if n in self.retrievers]
            names = [n for n in h.get("retrievers", default if len(default) == 2 else self.retrievers)
                     if n in self.retrievers]
            weights = {n: w for n, w in h.get("weights", {}).items() if n in names}
            return HybridRetriever({n: self.retrievers[n] for n in names}, weights,
                                   h.get("k_rrf", 60), h.get("depth", 100))
        if name not in self.retrievers:
            raise ValueError(f"KB at {self.dir} has no {name!r} index (it has {sorted(self.retrievers)}); "
                             f"rebuild with `nanochat kb build ... --retrievers "
                             f"{','.join([*self.retrievers, name])}`")
        return self.retrievers[name]

    def get(self, doc_id):
        if doc_id not in self.by_id:
            raise KeyError(f"no document {doc_id!r} in KB at {self.dir}")
        return self.by_id[doc_id]

    def __len__(self):
        return len(self.docs)

    # ------------------------------------------------------------------------------- changes

    def add(self, docs, save=True):
        """Adds new documents. Lexical statistics (idf, lengths) are refit over all documents,
        which takes about a second per 5k docs; dense only encodes the new texts (embedding cache)."""
        docs = validate_documents(docs)
        clash = [d["id"] for d in docs if d["id"] in self.by_id]
        if clash:
            raise ValueError(f"{len(clash)} document id(s) already in KB at {self.dir} (e.g. {clash[0]!r}); "
                             "remove them first to replace them. Nothing was added.")
        self._reindex(self.docs + docs, save)

    def remove(self, ids, save=True):
        ids = set(ids)
        unknown = sorted(ids - set(self.by_id))
        if unknown:
            raise ValueError(f"{len(unknown)} id(s) not in KB at {self.dir} (e.g. {unknown[0]!r}); nothing was removed")
        if len(ids) == len(self.docs):
            raise ValueError(f"removing all {len(ids)} documents would leave the KB at {self.dir} empty; "
                             "delete the directory instead")
        self._reindex([d for d in self.docs if d["id"] not in ids], save)

    def _reindex(self, docs, save):
        old = self.docs
        try:
            for r in self.retrievers.values():
                r.index(docs)
            self.docs, self.by_id = docs, {d["id"]: d for d in docs}
            if save and self.dir is not None:
                self.save()
        except BaseException:
            # A failed index or write leaves the KB on disk as it was; memory must agree with it,
            # or a server would search documents that a restart loses.
            for r in self.retrievers.values():
                r.index(old)
            self.docs, self.by_id = old, {d["id"]: d for d in old}
            raise

    def info(self):
        out = {"dir": str(self.dir), "num_documents": len(self.docs),
               "retrievers": {n: r.config() for n, r in self.retrievers.items()}}
        if "dense" in self.retrievers:
            out["embedding_model"] = self.retrievers["dense"].model_info
        if self.dir is not None and (self.dir / "manifest.json").exists():
            m = json.loads((self.dir / "manifest.json").read_text(encoding="utf-8"))
            out.update(format_version=m["format_version"], documents_sha256=m["documents_sha256"],
                       size_bytes=sum((self.dir / f).stat().st_size for f in m["files"]),
                       versions=m.get("versions", {}))
        return out


def _check_target(target):
    if target.exists() and any(target.iterdir()) and not (target / "manifest.json").exists():
        # Saving replaces the whole directory: never do that to something that is not a KB.
        raise ValueError(f"{target} exists, is not empty and is not a KB; choose an empty or new directory")


def read_manifest(dir):
    dir = Path(dir)
    path = dir / "manifest.json"
    if not dir.is_dir():
        raise FileNotFoundError(f"no KB at {dir}; build one with "
                                f"`nanochat kb build --documents F.jsonl --output {dir}`")
    if not path.is_file():
        raise KBError(f"{dir} is not a KB (no manifest.json); {_rebuild_hint(dir)}")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KBError(f"KB manifest {path} is corrupted ({e}); {_rebuild_hint(dir)}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise KBError(f"{path} is not a nanochat KB manifest; {_rebuild_hint(dir)}")
    if m.get("format_version") != FORMAT_VERSION:
        raise KBError(f"KB at {dir} has format version {m.get('format_version')}, this code reads version "
                      f"{FORMAT_VERSION}; {_rebuild_hint(dir)}")
    for key in ("num_documents", "documents_sha256", "retrievers", "files"):
        if key not in m:
            raise KBError(f"KB manifest {path} lacks {key!r}; {_rebuild_hint(dir)}")
    return m


def _versions(retrievers):
    from importlib.metadata import PackageNotFoundError, version
    pkgs = {"bm25": ["bm25s"], "dense": ["sentence-transformers", "faiss-cpu"], "tfidf": ["scipy"]}
    out = {}
    for name in retrievers:
        for p in pkgs.get(name, []):
            try:
                out[p] = version(p)
            except PackageNotFoundError:
                pass
    return out
