"""Small shared helpers: the one atomic writer, the one JSONL reader, hashing, print0."""
import difflib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def atomic_write_bytes(path, data: bytes):
    # Write to a temp file in the same directory, fsync, then rename: a killed process
    # leaves either the old file or the new one, never half of one.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform/filesystem
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path, text: str):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=2):
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_bytes(path, error, what, missing, fix=""):
    """A file's bytes. A missing file raises error("<what> <path> <missing>"), an unreadable one
    error("<what> <path> cannot be read (...)"); `fix` (what to do) ends both messages."""
    end = f"; {fix}" if fix else ""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} {missing}{end}") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be read ({e}){end}") from e


def jsonl_rows(path):
    """Yields (line_no, row, error) for each line of a JSONL file: row is a dict, or None when
    error is (reason, message) naming the file and line. Blank lines are ("blank_line", ...):
    callers decide whether a blank line is worth counting."""
    path = Path(path)
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line_no, None, ("invalid_utf8", f"{where}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                                      f"{e.start + 1}); re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path}`)")
                continue
            if not line.strip():
                yield line_no, None, ("blank_line", f"{where}: blank line")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield line_no, None, ("malformed_json", f"{where}: malformed JSON ({e.msg} at column {e.colno}); "
                                      "each line must be one JSON object")
                continue
            if not isinstance(row, dict):
                yield line_no, None, ("malformed_json", f"{where}: expected a JSON object, got {type(row).__name__}")
                continue
            yield line_no, row, None


def read_jsonl(path, error=ValueError):
    """Every row of a JSONL file (blank lines aside); the first bad line raises `error` with a
    message naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the stage that writes it (see dvc.yaml: `dvc repro`)")
    rows = []
    for _, row, err in jsonl_rows(path):
        if err is None:
            rows.append(row)
        elif err[0] != "blank_line":
            raise error(err[1])
    return rows


def print0(*args, **kw):
    """print to stderr from rank 0 only (every rank runs the same code under torchrun)."""
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, file=sys.stderr, flush=True, **kw)


def rank_world():
    """(rank, world size): (0, 1) outside torchrun."""
    import torch.distributed as dist
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def gather(items):
    """Every rank's list, concatenated in rank order (the list itself in one process)."""
    import torch.distributed as dist
    rank, world = rank_world()
    if world == 1:
        return items
    out = [None] * world
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def sharded(fn, items):
    """fn(items), under torchrun split across the ranks (rank r takes items[r::world]) and
    gathered back into the order of items on every rank. fn returns one result per item."""
    rank, world = rank_world()
    if world == 1:
        return fn(items)
    parts = gather([fn(items[rank::world])])
    return [parts[i % world][i // world] for i in range(len(items))]


def offline_env():
    """No network at run time: models load from installed packages, telemetry is off."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def hash_path(path) -> str:
    """sha256 of a file, or of a directory as a deterministic digest of its files' relative
    paths and contents (sorted, so the same tree always gives the same hash). The same digest
    for MLflow's data hashes and a checkpoint's lineage, so the two agree."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist; run the stage that produces it (`dvc repro`)")
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def git_commit(cwd=None) -> str:
    """HEAD's commit, with "-dirty" when tracked files differ from it; "unknown" outside git."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=True).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def closest(key, valid):
    """The valid name nearest to a mistyped `key` (for "did you mean" hints), or None."""
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.6)
    return close[0] if close else None
