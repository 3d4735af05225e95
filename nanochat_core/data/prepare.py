"""The prepare_documents stage's core: world + real text -> KB documents, corpus, QA sets.

prepare_documents(params, out_dir) writes, each file atomically:
  out_dir/documents.jsonl            KB documents: every world entity (counterfactual edits
                                     applied), plus real text when kb_include_real_text
  out_dir/corpus/shard_00000.jsonl   pretraining text, {"text", "source"} per line: real text
                                     and the train entities' documents in their original
                                     (pre-edit) form, never a test person's fact; world
                                     lines also list the "people" they name
  out_dir/qa/{train,val,test,rl}.jsonl  question records (schema in questions.make_questions);
                                     rl.jsonl (RL people's questions) is empty unless
                                     world.rl_fraction > 0
and returns a summary dict for the caller to log. See world.py for the world's design.
"""
import json
import random
import re
from pathlib import Path

from nanochat_core.common import atomic_write_text, closest, sha256_file
from nanochat_core.data import world as W
from nanochat_core.data.documents import validate_documents, write_documents
from nanochat_core.data.qa_sources import QA_SOURCE_TYPES, load_qa_source
from nanochat_core.data.questions import make_questions
from nanochat_core.data.sources import load_source, python_docs, validate_source_spec

QA_TYPES = ("single", "2hop", "3hop", "unanswerable")

DEFAULTS = {
    "seed": 1337,                      # everything below is a deterministic function of it
    "world": {
        "n_people": 400,               # people; the only entities held out (test_fraction of them)
        "n_cities": 40,
        "n_countries": 8,              # <= n_cities: every country gets at least one city
        "n_companies": 60,             # each founded by a person
        "n_universities": 16,
        "test_fraction": 0.2,          # share of people held out: their facts exist only in the KB
        "rl_fraction": 0.0,            # share of people held out like them for REFRAG's RL only (qa/rl.jsonl)
        "missing_fact_rate": 0.15,     # chance a person lacks birth_year / studied_at / works_at (unanswerables)
        "max_mentions": 3,             # names listed per "people born in X include ..." sentence
        "paraphrases_per_entity": 3,   # corpus renderings per train entity (varied templates and order)
    },
    "questions": {                     # all counts are caps: when fewer exist, all are used (see summary)
        "train": {"single": 1200, "2hop": 800, "3hop": 500, "unanswerable": 250},  # train entities -> qa/train
        "eval": {"single": 200, "2hop": 200, "3hop": 150, "unanswerable": 100},    # test people -> qa/val + qa/test
        "counterfactual": 60,          # edited train facts (KB edited, corpus original) -> qa/test
        "known_single": 100,           # train-fact single-hop questions -> qa/test (held out of train)
        "val_fraction": 0.25,          # share of each eval type that goes to qa/val
        "world": True,                 # false: data/qa holds only the squad/hotpotqa sources' questions
    },
    "real_text": {
        "python_docs": True,           # Python's installed documentation, no network needed
        "max_chars": 300_000,          # cap on the python_docs text
    },
    "sources": [],                     # user sources: [{type: jsonl|text|dir|parquet|python_docs|squad|hotpotqa, path: ...}]
    "kb_include_real_text": False,     # also put real text (python_docs, sources) into documents.jsonl
    "corpus": {
        "shard_chars": 100_000,        # characters of text per shard; several shards let pretraining hold one out
        "fresh_people": 2000,          # documents about people who exist nowhere else, so the LM learns to copy
                                       # a name it has never seen (world.fresh_people_corpus); 0 = none
    },
}

# Impossible values: key path -> (check, what it must be).
_LIMITS = {
    "world.n_people": (lambda v: 2 <= v <= W.MAX_ENTITIES, f"between 2 and {W.MAX_ENTITIES} (one train, one test)"),
    "world.n_cities": (lambda v: 2 <= v <= W.MAX_ENTITIES, f"between 2 and {W.MAX_ENTITIES}"),
    "world.n_countries": (lambda v: 1 <= v <= W.MAX_ENTITIES, f"between 1 and {W.MAX_ENTITIES}"),
    "world.n_companies": (lambda v: 1 <= v <= W.MAX_ENTITIES, f"between 1 and {W.MAX_ENTITIES}"),
    "world.n_universities": (lambda v: 1 <= v <= W.MAX_ENTITIES, f"between 1 and {W.MAX_ENTITIES}"),
    "world.test_fraction": (lambda v: 0 < v < 1, "strictly between 0 and 1"),
    "world.rl_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "world.missing_fact_rate": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "world.max_mentions": (lambda v: v >= 1, ">= 1"),
    "world.paraphrases_per_entity": (lambda v: v >= 1, ">= 1"),
    "questions.counterfactual": (lambda v: v >= 0, ">= 0"),
    "questions.known_single": (lambda v: v >= 0, ">= 0"),
    "questions.val_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "real_text.max_chars": (lambda v: v >= 0, ">= 0"),
    "corpus.shard_chars": (lambda v: v >= 1, ">= 1"),
    "corpus.fresh_people": (lambda v: 0 <= v <= W.MAX_ENTITIES, f"between 0 and {W.MAX_ENTITIES}"),
}


def _check(value, default, path):
    """Fills defaults into `value` following `default`'s shape; ValueError naming `path`."""
    if isinstance(default, dict):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {type(value).__name__} ({value!r})")  # noqa: TRY004
        for k in value:
            if k not in default:
                close = closest(k, default)
                hint = f"; did you mean `{close}`?" if close else ""
                raise ValueError(f"{path}.{k}: unknown key; valid keys are {', '.join(default)}{hint}")
        return {k: _check(value.get(k, dv), dv, f"{path}.{k}") for k, dv in default.items()}
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"{path}: expected {type(default).__name__}, got {type(value).__name__} ({value!r})")
    return float(value) if isinstance(default, float) else value


def validate_params(params, prefix="documents"):
    """The `documents` params with defaults filled. Refuses an unknown key, a wrong type or
    an impossible value with a ValueError naming the full key path."""
    p = _check(params, DEFAULTS, prefix)
    for key, (ok, what) in _LIMITS.items():
        section, name = key.split(".")
        if not ok(p[section][name]):
            raise ValueError(f"{prefix}.{key}: must be {what}, got {p[section][name]!r}")
    for part in ("train", "eval"):
        for qtype, n in p["questions"][part].items():
            if n < 0:
                raise ValueError(f"{prefix}.questions.{part}.{qtype}: must be >= 0, got {n}")
    w = p["world"]
    if w["test_fraction"] + w["rl_fraction"] >= 1:
        raise ValueError(f"{prefix}.world.rl_fraction: test_fraction + rl_fraction must be < 1 so some people "
                         f"are train people, got {w['test_fraction']} + {w['rl_fraction']}")
    if w["n_countries"] > w["n_cities"]:
        raise ValueError(f"{prefix}.world.n_countries: must be <= world.n_cities ({w['n_cities']}) so every "
                         f"country has a city, got {w['n_countries']}")
    p["sources"] = [validate_source_spec(s, f"{prefix}.sources[{i}]") for i, s in enumerate(p["sources"])]
    return p


def _jsonl(rows):
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def _count(rows, key):
    out = {}
    for r in rows:
        out[r[key]] = out.get(r[key], 0) + 1
    return dict(sorted(out.items()))


def prepare_documents(params, documents_path, corpus_dir, qa_dir):
    """Builds the world and the real text, writes the KB documents (documents_path), the
    pretraining shards (corpus_dir) and the QA splits (qa_dir); returns a summary."""
    p = validate_params(params)
    corpus_dir, qa_dir = Path(corpus_dir), Path(qa_dir)
    w, q = p["world"], p["questions"]
    world = W.build_world(p["seed"], n_people=w["n_people"], n_cities=w["n_cities"], n_countries=w["n_countries"],
                          n_companies=w["n_companies"], n_universities=w["n_universities"],
                          test_fraction=w["test_fraction"], missing_fact_rate=w["missing_fact_rate"],
                          n_counterfactual=q["counterfactual"], max_mentions=w["max_mentions"],
                          rl_fraction=w["rl_fraction"])

    # Real text: python_docs first, then the user's sources in the order given.
    real_docs, source_stats = [], []
    if p["real_text"]["python_docs"]:
        docs, stats = python_docs(p["real_text"]["max_chars"])
        real_docs += docs
        source_stats.append(stats)
    qa_docs, qa_files = [], {"train": [], "val": [], "test": []}
    for i, spec in enumerate(p["sources"]):
        if spec["type"] in QA_SOURCE_TYPES:  # QA datasets: paragraphs into the KB (not the corpus), questions into data/qa
            docs, files, stats = load_qa_source(spec, p["seed"])
            qa_docs += docs
            for name in qa_files:
                qa_files[name] += files[name]
        else:
            docs, stats = load_source(spec, f"documents.sources[{i}]")
            real_docs += docs
        source_stats.append(stats)

    world_docs = world.kb_documents()
    kb_docs = world_docs + qa_docs + (real_docs if p["kb_include_real_text"] else [])
    first = {}
    for d in world_docs + qa_docs + real_docs:  # ids must be unique even where only the corpus uses them
        if d["id"] in first:
            raise ValueError(f"document id {d['id']!r} comes from both {first[d['id']]} and {d['source']}; "
                             "give one of the sources a different `name`")
        first[d["id"]] = d["source"]

    # Corpus: train-entity renderings (original facts) + real text, shuffled, in shards.
    world_corpus, dup_renderings = world.corpus_documents(w["paraphrases_per_entity"])
    # Each world record lists the people it names, so the tokenizer trainer can leave them out
    # (see stages.tokenizer_texts): people are the held-out entity type.
    people = re.compile("|".join(re.escape(n) for n in sorted(
        (e.name for e in world.entities.values() if e.type == "person"), key=len, reverse=True)))
    records = [{"text": d["text"], "source": "world", "people": sorted(set(people.findall(d["text"])))}
               for d in world_corpus]
    records += [{"text": d["text"], "source": d["source"]} for d in real_docs]
    fresh = W.fresh_people_corpus(world, p["corpus"]["fresh_people"], p["seed"]) if p["corpus"]["fresh_people"] else []
    records += fresh
    random.Random(f"corpus:{p['seed']}").shuffle(records)
    shards, cur, size = [], [], 0
    for r in records:
        if cur and size + len(r["text"]) > p["corpus"]["shard_chars"]:
            shards.append(cur)
            cur, size = [], 0
        cur.append(r)
        size += len(r["text"])
    if cur:
        shards.append(cur)

    files, qa_summary = make_questions(world, p["seed"], q["train"], q["eval"], q["known_single"],
                                         q["val_fraction"])
    if not q["world"]:  # only the QA sources' questions (the world still gives the corpus and drills)
        files = {name: [] for name in files}
    for name in qa_files:
        files[name] += qa_files[name]
    if not any(files.values()):
        raise ValueError("documents.questions.world is false and no squad/hotpotqa source gives questions; "
                         "add one to documents.sources or set documents.questions.world: true")

    # Write. Each file is atomic; stale shards from an earlier, larger run are removed last.
    written = {}
    doc_path = Path(documents_path)
    write_documents(doc_path, validate_documents(kb_docs, "prepared KB documents"))
    written[doc_path.name] = doc_path
    shard_names = set()
    for i, shard in enumerate(shards):
        path = corpus_dir / f"shard_{i:05d}.jsonl"
        atomic_write_text(path, _jsonl(shard))
        written[f"{corpus_dir.name}/{path.name}"] = path
        shard_names.add(path.name)
    for old in sorted(corpus_dir.glob("shard_*.jsonl")) if corpus_dir.exists() else []:
        if old.name not in shard_names:
            old.unlink()
    for name, recs in files.items():
        path = qa_dir / f"{name}.jsonl"
        atomic_write_text(path, _jsonl(recs))
        written[f"{qa_dir.name}/{name}.jsonl"] = path

    test_people = world.test_people()
    return {
        "seed": p["seed"],
        "world": {"entities": _count([{"t": e.type} for e in world.entities.values()], "t"),
                  "test_people": len(test_people),
                  "rl_people": sum(e.split == "rl" for e in world.entities.values()), "counterfactual_edits": len(world.edits),
                  "missing_facts": sum(1 for e in world.entities.values() if e.type == "person"
                                       for r in W.OPTIONAL_RELATIONS if r not in world.facts[e.id])},
        "documents": {"count": len(kb_docs), "by_source": _count(kb_docs, "source")},
        "corpus": {"shards": len(shards), "records": len(records), "chars": sum(len(r["text"]) for r in records),
                   "world_records": len(world_corpus),
                   "fresh_people_records": len(fresh),
                   "by_source": _count([{"s": r["source"] if r["source"] in ("world", "fresh_people") else "real_text"}
                                        for r in records], "s")},
        "qa": {name: {"count": len(recs), "by_type": _count(recs, "type"), "by_entity_split": _count(recs, "entity_split")}
               for name, recs in files.items()},
        "questions": {**qa_summary, "counterfactual": {"requested": q["counterfactual"], "produced": len(world.edits)}},
        "sources": source_stats,
        # What was left out, by reason: identical world renderings, and per source its skips.
        "skipped": {"world_duplicate_renderings": dup_renderings,
                    **{(s["path"] or s["name"] or s["type"]): s["skipped"] for s in source_stats if s["skipped"]}},
        "sha256": {k: sha256_file(v) for k, v in written.items()},
    }
