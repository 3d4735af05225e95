"""QA datasets in their official formats, as `documents.sources` entries: their paragraphs go
into the KB, their questions (with answers and gold documents) into data/qa, beside the
synthetic world's, split into train/val/test with the documents seed, grouping questions that
share a gold paragraph, so no test question's gold paragraph is a train question's.

    {type: squad,    path: .../dev-v2.0.json}                    SQuAD 1.1 / 2.0 JSON
    {type: hotpotqa, path: .../hotpot_dev_distractor_v1.json}    the official distractor JSON
    {type: hotpotqa, path: .../hotpotqa_dev_distractor_250.jsonl} IRCoT's JSONL layout (../shared/data)
Optional keys: name (id prefix and the `dataset` of its questions; default the type),
max_questions (0 = all), val_fraction, test_fraction, on_error (raise | skip).

Question types are the world's: SQuAD answerable -> single, SQuAD 2.0 impossible ->
unanswerable (the answer is to abstain), HotpotQA -> 2hop (its two supporting paragraphs are
the hops, in the file's order; each hop's query is its paragraph's title). Each question
carries `dataset`, so evaluate reports e.g. squad_single apart from the world's single.

A bad row (a missing field, a wrong type) raises SourceError naming the file and the row
(entry/paragraph/question for SQuAD, the line for JSONL), unless on_error is skip: then it is
left out and counted in stats["skipped"] by reason. Duplicate paragraphs (HotpotQA repeats
popular ones across questions) become one document.
"""
import hashlib
import json
import random
from pathlib import Path

from nanochat_core.common import jsonl_rows
from nanochat_core.data.sources import SourceError, count_skip, new_stats
from nanochat_core.data.world import ABSTAIN

QA_SOURCE_TYPES = ("squad", "hotpotqa")


class _Bad(Exception):
    def __init__(self, reason, msg):
        super().__init__(msg)
        self.reason = reason


def _paragraph_id(name, title, text):
    return f"{name}:" + hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()[:16]


def _doc(doc_id, title, text, path):
    return {"id": doc_id, "title": title, "text": text, "source": str(path), "metadata": {}}


def _str(x, what, where):
    if not isinstance(x, str) or not x.strip():
        raise _Bad("missing_field", f"{where}: {what} must be a non-empty string, got {x!r}")
    return x.strip()


def _id(x, what, where):
    if isinstance(x, bool) or not isinstance(x, (str, int)) or not str(x).strip():
        raise _Bad("missing_field", f"{where}: {what} must be a non-empty string or number, got {x!r}")
    return str(x).strip()


def _read_json(path):
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: invalid UTF-8 at byte {e.start}; re-encode the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def _unique(q, where, seen):
    if q["id"] in seen:
        raise _Bad("duplicate_id", f"{where}: duplicate question id {q['id']!r} (first at {seen[q['id']]})")
    seen[q["id"]] = where


def _policy(spec, stats):
    """What to do with a bad row: raise (the default), or skip it and count it by reason."""
    def bad(e):
        if spec["on_error"] == "raise":
            raise SourceError(f"{e} (on_error: skip in the source spec leaves such rows out, counted)") from None
        count_skip(stats, e.reason)
    return bad


def load_squad(spec):
    """-> (documents, questions, stats)"""
    path, name = Path(spec["path"]), spec.get("name") or "squad"
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise SourceError(f"{path}: not SQuAD JSON (expected {{\"version\", \"data\": [articles]}}); "
                          "use type hotpotqa or jsonl for other layouts")
    stats = new_stats(spec, path)
    bad = _policy(spec, stats)
    docs, questions, seen = {}, [], {}
    for i, art in enumerate(data["data"]):
        try:
            if not isinstance(art, dict) or not isinstance(art.get("paragraphs"), list):
                raise _Bad("malformed_row", f"{path}: data[{i}]: needs 'title' and a 'paragraphs' list")
            title = _str(art.get("title"), "title", f"{path}: data[{i}]").replace("_", " ")
        except _Bad as e:
            bad(e)
            continue
        for j, par in enumerate(art["paragraphs"]):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            try:
                if not isinstance(par, dict) or not isinstance(par.get("qas"), list):
                    raise _Bad("malformed_row", f"{where}: needs 'context' and a 'qas' list")
                text = _str(par.get("context"), "context", where)
            except _Bad as e:
                bad(e)
                continue
            pid = _paragraph_id(name, title, text)
            docs.setdefault(pid, _doc(pid, title, text, path))
            for n, qa in enumerate(par["qas"]):
                try:
                    q = _squad_question(name, qa, pid, title, f"{where}.qas[{n}]")
                    _unique(q, f"{where}.qas[{n}]", seen)
                    questions.append(q)
                except _Bad as e:
                    bad(e)
    stats["documents"], stats["files"] = len(docs), 1
    stats["chars"] = sum(len(d["text"]) for d in docs.values())
    return list(docs.values()), questions, stats


def _squad_question(name, qa, pid, title, where):
    if not isinstance(qa, dict):
        raise _Bad("malformed_row", f"{where}: expected an object with 'id', 'question', 'answers'")
    question = _str(qa.get("question"), "question", where)
    qid = _id(qa.get("id"), "id", where)
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise _Bad("malformed_row", f"{where}: is_impossible must be true or false, got {impossible!r}")
    answers = []
    if not impossible:
        if not isinstance(qa.get("answers"), list) or not qa["answers"]:
            raise _Bad("missing_field", f"{where}: an answerable question needs a non-empty 'answers' list")
        for a in qa["answers"]:
            t = a.get("text") if isinstance(a, dict) else None
            if not isinstance(t, str) or not t.strip():
                raise _Bad("missing_field", f"{where}: every answer needs a non-empty 'text'")
            if t.strip() not in answers:
                answers.append(t.strip())
    return {"id": f"{name}-{qid}", "type": "unanswerable" if impossible else "single", "question": question,
            "answers": [ABSTAIN] if impossible else answers, "gold_doc_ids": [[pid]],
            "hops": [{"doc_id": pid, "query": title, "answer": ABSTAIN if impossible else answers[0]}],
            "relation": f"{name}.span", "subject": title, "subject_id": pid, "dataset": name}


def load_hotpotqa(spec):
    """-> (documents, questions, stats). Official JSON (a list of {_id, question,
    answer, supporting_facts, context}) or IRCoT's JSONL ({question_id, question_text,
    answers_objects, contexts: [{title, paragraph_text, is_supporting}]})."""
    path, name = Path(spec["path"]), spec.get("name") or "hotpotqa"
    stats = new_stats(spec, path)
    bad = _policy(spec, stats)
    docs, questions, seen = {}, [], {}
    if path.suffix.lower() == ".jsonl":
        rows = []
        for line_no, row, err in jsonl_rows(path):
            if err and err[0] == "blank_line":
                count_skip(stats, "blank_line")
            elif err:
                bad(_Bad(err[0], err[1]))
            else:
                rows.append((f"{path}:{line_no}", row, _hotpot_jsonl))
    else:
        data = _read_json(path)
        if not isinstance(data, list):
            raise SourceError(f"{path}: not HotpotQA JSON (expected a list of questions); a .jsonl file is read "
                              "as IRCoT's layout")
        rows = [(f"{path}: [{i}]", row, _hotpot_json) for i, row in enumerate(data)]
    for where, row, parse in rows:
        try:
            q, pars = parse(name, row, where)
            _unique(q, where, seen)
        except _Bad as e:
            bad(e)
            continue
        for d in pars:  # only rows that pass every check add documents
            docs.setdefault(d["id"], _doc(d["id"], d["title"], d["text"], path))
        questions.append(q)
    stats["documents"], stats["files"] = len(docs), 1
    stats["chars"] = sum(len(d["text"]) for d in docs.values())
    return list(docs.values()), questions, stats


def _hotpot_question(name, qid, question, answer, paragraphs, where):
    """paragraphs: [(title, text, supporting)] in the file's order -> (question, its documents)."""
    pars = [{"id": _paragraph_id(name, t, x), "title": t, "text": x} for t, x, _ in paragraphs]
    gold = [(d["id"], d["title"]) for d, (_, _, sup) in zip(pars, paragraphs) if sup]
    if len(gold) != 2:
        raise _Bad("malformed_row", f"{where}: needs exactly 2 supporting paragraphs, has {len(gold)}")
    return {"id": f"{name}-{qid}", "type": "2hop", "question": question, "answers": [answer],
            "gold_doc_ids": [[gold[0][0]], [gold[1][0]]],
            "hops": [{"doc_id": g, "query": t, "answer": answer if n else t} for n, (g, t) in enumerate(gold)],
            "relation": f"{name}.bridge", "subject": gold[0][1], "subject_id": gold[0][0], "dataset": name}, pars


def _hotpot_jsonl(name, row, where):
    question = _str(row.get("question_text"), "question_text", where)
    qid = _id(row.get("question_id"), "question_id", where)
    spans = [s for a in row.get("answers_objects") or [] if isinstance(a, dict) for s in a.get("spans") or []]
    answer = _str(spans[0] if spans else None, "answers_objects[0].spans[0]", where)
    ctx = row.get("contexts")
    if not isinstance(ctx, list) or not ctx:
        raise _Bad("missing_field", f"{where}: needs a non-empty 'contexts' list")
    pars = []
    for n, c in enumerate(ctx):
        if not isinstance(c, dict):
            raise _Bad("malformed_row", f"{where}: contexts[{n}] must be an object")
        if not isinstance(c.get("is_supporting", False), bool):
            raise _Bad("malformed_row", f"{where}: contexts[{n}].is_supporting must be true or false, "
                                        f"got {c['is_supporting']!r}")
        pars.append((_str(c.get("title"), f"contexts[{n}].title", where),
                     _str(c.get("paragraph_text"), f"contexts[{n}].paragraph_text", where), c.get("is_supporting") is True))
    return _hotpot_question(name, qid, question, answer, pars, where)


def _hotpot_json(name, row, where):
    if not isinstance(row, dict):
        raise _Bad("malformed_row", f"{where}: expected an object")
    question = _str(row.get("question"), "question", where)
    qid = _id(row.get("_id"), "_id", where)
    answer = _str(row.get("answer"), "answer", where)
    ctx, sup = row.get("context"), row.get("supporting_facts")
    if not isinstance(ctx, list) or not isinstance(sup, list):
        raise _Bad("missing_field", f"{where}: needs 'context' and 'supporting_facts' lists")
    if not all(isinstance(f, list) and len(f) == 2 and isinstance(f[0], str) for f in sup):
        raise _Bad("malformed_row", f"{where}: supporting_facts must be [title, sentence number] pairs")
    sup_titles = {f[0] for f in sup}
    pars = []
    for n, c in enumerate(ctx):
        if not (isinstance(c, list) and len(c) == 2 and isinstance(c[1], list) and all(isinstance(x, str) for x in c[1])):
            raise _Bad("malformed_row", f"{where}: context[{n}] must be [title, [sentences as strings]]")
        title = _str(c[0], f"context[{n}][0]", where)
        pars.append((title, _str("".join(c[1]), f"context[{n}] text", where),
                     title in sup_titles))
    return _hotpot_question(name, qid, question, answer, pars, where)


def load_qa_source(spec, seed):
    """-> (documents, {"train","val","test": [questions]}, stats). Questions are grouped
    (all questions whose gold documents overlap, transitively) and the groups shuffled with
    `seed`: the first test_fraction of them are test, the next val_fraction val, the rest
    train. max_questions > 0 keeps the first groups until that many questions."""
    if not Path(spec["path"]).is_file():
        raise SourceError(f"{spec['path']}: no such file (a {spec['type']} source); check the path, which is "
                          "relative to the project root")
    docs, questions, stats = (load_squad if spec["type"] == "squad" else load_hotpotqa)(spec)
    # Questions sharing a gold document are one group (HotpotQA reuses popular paragraphs), so a
    # test question's gold paragraph is never a train question's.
    parent = {}

    def root(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for q in questions:
        golds = [d for hop in q["gold_doc_ids"] for d in hop]
        for d in golds[1:]:
            parent[root(d)] = root(golds[0])
    groups = {}
    for q in questions:
        groups.setdefault(root(q["gold_doc_ids"][0][0]), []).append(q)
    order = sorted(groups)
    random.Random(f"qa:{seed}:{spec.get('name') or spec['type']}").shuffle(order)
    if spec["max_questions"]:
        kept, n = [], 0
        for g in order:
            if n >= spec["max_questions"]:
                break
            kept.append(g)
            n += len(groups[g])
        stats["skipped"]["over_max_questions"] = len(questions) - n
        order = kept
    n_test, n_val = round(len(order) * spec["test_fraction"]), round(len(order) * spec["val_fraction"])
    split = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    files = {name: [{**q, "entity_split": "train" if name == "train" else "test"} for g in gs for q in groups[g]]
             for name, gs in split.items()}
    stats["questions"] = {name: len(qs) for name, qs in files.items()}
    return docs, files, stats
