"""`nanochat chat`: the streamed answer is evaluate's answer token for token, events come in
order (each search, its sources, the answer, the resolved citations), the CLI works with
piped stdin and in a pseudo-terminal, and every missing or mismatched file gets an error
that names the command that fixes it."""
import dataclasses
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
import torch
from fakes import BiasedGPT, distinct_city, on_file, scripted, tiny_config, tiny_world

from nanochat_core import chat, cli
from nanochat_core.checkpoint import save_checkpoint
from nanochat_core.data.world import ABSTAIN, build_world
from nanochat_core.inference import answer_questions
from nanochat_core.model import GPT
from nanochat_core.rag import retrieve
from nanochat_core.retrieval import KnowledgeBase
from nanochat_core.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def setup():
    return tiny_world(3, 5, 5, answer_word="Zed")  # the scripted models answer "Zed"


_config, _city = tiny_config, distinct_city


@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize("mode", ["closed_book", "rag", "refrag"])
def test_the_streamed_answer_is_evaluates_answer_token_for_token(setup, mode, copy):
    world, kb, tok, qs = setup
    torch.manual_seed(0)
    sp = tok.encode_special
    # random weights (long, arbitrary answers) that open with a search and often close one, so
    # refrag runs search several times, up to the hop limit
    model = BiasedGPT(_config(tok), always={sp("<|search_end|>"): 4.0},
                      after={sp("<|assistant_start|>"): sp("<|search_start|>")}).eval()
    want = answer_questions(model, tok, qs, mode, kb, k=3, max_hops=3, max_new_tokens=20, copy=copy)
    if mode == "refrag":  # it searched (unguarded to the limit; the guard closes a query only where a word ends)
        assert sum(len(w["queries"]) == (2 if copy else 3) for w in want) >= 3
    for w, q in zip(want, qs):
        events = list(chat.answer_stream(model, tok, q["question"], mode=mode, kb=kb, k=3, max_hops=3,
                                         max_new_tokens=20, copy=copy))
        done = events[-1]
        assert done["event"] == "done" and [e for e in events if e["event"] == "done"] == [done]
        assert (done["raw"], done["answer"]) == (w["raw"], w["prediction"])
        assert [c["n"] for c in done["citations"]] == w["citations"]
        assert [[s["id"] for s in block] for block in done["sources"]] == [[d["id"] for d in b] for b in w["documents"]]
        # hop 1 searched for the question in rag mode too (evaluate lists only refrag's searches)
        assert done["queries"] == {"closed_book": [], "rag": [q["question"]], "refrag": w["queries"]}[mode]
        # the streamed tokens after the last block spell the final answer
        last_block = max([i for i, e in enumerate(events) if e["event"] == "sources"], default=-1)
        streamed = "".join(e["text"] for e in events[last_block + 1:] if e["event"] == "token")
        assert streamed.strip() == done["raw"]


def test_events_show_each_search_its_new_sources_then_the_cited_answer(setup):
    world, kb, tok, qs = setup
    city = _city(world, tok)
    torch.manual_seed(0)
    model = BiasedGPT(_config(tok), after=scripted(tok, " Zed [2]", search=" " + city)).eval()
    q = qs[0]["question"]
    # copy=False: the scripted search names a city hop 1 need not show (the guard would forbid it)
    events = list(chat.answer_stream(model, tok, q, mode="refrag", kb=kb, k=3, max_hops=3, copy=False))
    kinds = [e["event"] for e in events]
    assert kinds[:4] == ["search", "sources", "search", "sources"]
    assert set(kinds[4:-1]) == {"token"} and kinds[-1] == "done"
    assert events[0] == {"event": "search", "hop": 1, "query": q}
    assert events[2] == {"event": "search", "hop": 2, "query": city}
    hop1 = retrieve(kb, [q], 3, "bm25")[0]
    assert [s["id"] for s in events[1]["sources"]] == [d["id"] for d in hop1]
    hop2 = [s["id"] for s in events[3]["sources"]]
    assert hop2 and not set(hop2) & {d["id"] for d in hop1}  # only new documents
    scores = [s["score"] for s in events[1]["sources"]]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    done = events[-1]
    assert done["answer"] == "Zed" and done["hops"] == 2 and not done["ungrounded"]
    second = events[3]["sources"][1]
    assert done["citations"] == [{"n": 2, "id": second["id"], "title": second["title"], "hop": 2}]
    assert set(done["timings"]) == {"retrieval_s", "generate_s", "first_token_s", "tokens", "tokens_per_s"}


def test_a_citation_of_a_source_never_shown_resolves_to_nothing(setup):
    _, kb, tok, qs = setup
    model = BiasedGPT(_config(tok), after=scripted(tok, " Zed [9]")).eval()
    done = chat.answer(model, tok, qs[0]["question"], mode="rag", kb=kb, k=3)
    assert done["answer"] == "Zed" and done["citations"] == [{"n": 9, "id": None, "title": None, "hop": None}]


@pytest.mark.parametrize("mode", ["rag", "refrag", "closed_book"])
def test_an_answer_no_source_holds_becomes_the_abstention_as_evaluate_scores_it(setup, mode):
    """"Zorb" is in no document: in RAG and REFRAG modes the answer is the abstention, citing
    nothing, with the model's text kept in raw; evaluate's answer_questions says the same.
    Closed-book has no sources, so its answer stands. (Without the copy guard, which would not
    let the model write "Zorb" at all: the next test.)"""
    _, kb, tok, qs = setup
    assert not any("zorb" in (d["title"] + " " + d["text"]).lower() for d in kb.docs)
    model = BiasedGPT(_config(tok), after=scripted(tok, " Zorb [1]")).eval()
    done = chat.answer(model, tok, qs[0]["question"], mode=mode, kb=kb, k=3, copy=False)
    want = answer_questions(model, tok, qs[:1], mode, kb, k=3)[0]
    grounded = mode != "closed_book"
    assert done["raw"] == want["raw"] == "Zorb [1]"
    assert done["answer"] == want["prediction"] == (ABSTAIN if grounded else "Zorb")
    assert done["ungrounded"] == want["ungrounded"] == grounded
    assert [c["n"] for c in done["citations"]] == want["citations"] == ([] if grounded else [1])


@pytest.mark.parametrize("mode", ["rag", "refrag"])
def test_the_copy_guard_lets_the_model_write_only_what_it_was_shown(setup, mode):
    """A model scripted to answer "Zorb" (in no document) under the copy guard: its answer is
    still a copy of a shown document, starting at a word (or the abstention), so ground keeps it;
    chat and evaluate agree. Closed-book is never guarded."""
    _, kb, tok, qs = setup
    model = BiasedGPT(_config(tok), after=scripted(tok, " Zorb [1]")).eval()
    for q in qs[:4]:
        done = chat.answer(model, tok, q["question"], mode=mode, kb=kb, k=3)
        want = answer_questions(model, tok, [q], mode, kb, k=3, copy=True)[0]
        assert (done["raw"], done["answer"]) == (want["raw"], want["prediction"])
        assert "Zorb" not in done["raw"] and not done["ungrounded"]
        answer = done["raw"].split("[")[0].strip()
        shown = " ".join(d["title"] + " " + d["text"] for b in want["documents"] for d in b)
        assert answer and (ABSTAIN.startswith(answer) or re.search(r"(^|\W)" + re.escape(answer), shown)), answer
    free = chat.answer(model, tok, qs[0]["question"], mode="closed_book", kb=kb, k=3)
    assert free["raw"] == "Zorb [1]"


def test_a_character_split_across_tokens_is_held_back_until_whole():
    world = build_world(3, n_people=20, n_cities=4, n_countries=2, n_companies=4, n_universities=2)
    docs = world.kb_documents()
    tok = Tokenizer.train(iter([d["text"] for d in docs] * 3), vocab_size=400)  # no merges for CJK bytes
    kb = KnowledgeBase.build(on_file(docs, "\u6771\u4eac"), None, ["bm25"])  # an answer its sources hold
    answer = " \u6771\u4eac[1]"  # two characters of three UTF-8 bytes each, one token per byte
    assert len(tok.encode(answer)) >= 6
    model = BiasedGPT(_config(tok), after=scripted(tok, answer)).eval()
    events = list(chat.answer_stream(model, tok, f"Where is {docs[0]['title']}?", mode="rag", kb=kb))
    pieces = [e["text"] for e in events if e["event"] == "token"]
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces) == answer.strip()
    assert events[-1]["answer"] == "\u6771\u4eac"


def test_bad_questions_are_refused_with_a_reason(setup):
    _, kb, tok, _ = setup
    model = GPT(_config(tok)).eval()
    with pytest.raises(chat.ChatError, match="empty"):
        chat.answer(model, tok, "   ", kb=kb)
    with pytest.raises(chat.ChatError, match="limit is 2000") as e:
        chat.answer(model, tok, "x" * 2001, kb=kb)
    assert e.value.status == 413
    with pytest.raises(chat.ChatError, match="needs a KB.*dvc repro build_kb"):
        chat.answer(model, tok, "Who?", mode="rag", kb=None)
    with pytest.raises(chat.ChatError, match="unknown mode"):
        chat.answer(model, tok, "Who?", mode="oracle", kb=kb)
    with pytest.raises(chat.ChatError, match="no 'dense' index .*it has bm25"):
        chat.answer(model, tok, "Who?", mode="rag", kb=kb, retriever="dense")
    with pytest.raises(chat.ChatError, match="k must be 1-16"):
        chat.answer(model, tok, "Who?", mode="rag", kb=kb, k=0)


# ------------------------------------------------------------------------------ the CLI

@pytest.fixture
def files(setup, tmp_path):
    """A checkpoint, tokenizer and KB on disk, as the pipeline leaves them."""
    world, kb, tok, qs = setup
    torch.manual_seed(0)
    model = GPT(_config(tok))
    save_checkpoint(tmp_path / "ckpt", 1, model.state_dict(),
                    {"config": dataclasses.asdict(model.config), "tokenizer_hash": tok.hash, "step": 1})
    tok.save(tmp_path / "tokenizer.json")
    KnowledgeBase.build(kb.docs, tmp_path / "kb", ["bm25"])
    return tmp_path


def _args(files, *extra):
    return ["--checkpoint", str(files / "ckpt"), "--tokenizer", str(files / "tokenizer.json"),
            "--kb", str(files / "kb"), *extra]


def test_chat_reads_questions_from_piped_stdin_and_prints_json(setup, files, monkeypatch, capsys):
    world, kb, tok, qs = setup
    city = _city(world, tok)
    model = BiasedGPT(_config(tok), after=scripted(tok, " Zed [1]", search=" " + city)).eval()
    real_load = chat.load
    monkeypatch.setattr(chat, "load", lambda *a, **kw: (model, *real_load(*a, **kw)[1:]))
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(f"{qs[0]['question']}\n{qs[1]['question']}\n"))
    assert cli.main(["chat", "--json", "--no-copy-guard", *_args(files)]) == 0  # it searches for a city not shown
    lines = capsys.readouterr().out.strip().splitlines()
    answers = [json.loads(line) for line in lines]
    assert [a["question"] for a in answers] == [qs[0]["question"], qs[1]["question"]]
    for a in answers:
        assert a["answer"] == "Zed" and a["hops"] == 2 and a["queries"][1] == city
        assert a["citations"][0]["id"] == a["sources"][-1][0]["id"]
    # the human form: each search, its sources with scores, the answer, citations resolved to titles
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(qs[0]["question"] + "\n"))
    assert cli.main(["chat", "--no-copy-guard", *_args(files)]) == 0
    out = capsys.readouterr().out
    first = answers[0]["sources"][0][0]
    cited = answers[0]["sources"][-1][0]
    assert f"search 1: {qs[0]['question']}" in out and f"search 2: {city}" in out
    assert f"[1] {first['title']} ({first['id']})" in out
    assert "answer: Zed [1]" in out and f"  [1] {cited['title']} ({cited['id']})" in out


def test_chat_says_when_what_it_wrote_is_in_no_source(setup, files, monkeypatch, capsys):
    """The streamed "Zorb" is in no source: the human form says the answer is the abstention
    instead, and --json carries the abstention, the model's text and ungrounded."""
    _, _, tok, qs = setup
    model = BiasedGPT(_config(tok), after=scripted(tok, " Zorb [1]")).eval()
    real_load = chat.load
    monkeypatch.setattr(chat, "load", lambda *a, **kw: (model, *real_load(*a, **kw)[1:]))
    assert cli.main(["chat", "-p", qs[0]["question"], "--mode", "rag", "--no-copy-guard", *_args(files)]) == 0
    out = capsys.readouterr().out
    assert "answer: Zorb [1]" in out and f"(no source it was shown backs this, so the answer is: {ABSTAIN})" in out
    assert cli.main(["chat", "-p", qs[0]["question"], "--mode", "rag", "--json", "--no-copy-guard", *_args(files)]) == 0
    a = json.loads(capsys.readouterr().out)
    assert (a["answer"], a["raw"], a["ungrounded"], a["citations"]) == (ABSTAIN, "Zorb [1]", True, [])
    # by default (the copy guard) it cannot write "Zorb": what it writes is a copy, so nothing is replaced
    assert cli.main(["chat", "-p", qs[0]["question"], "--mode", "rag", "--json", *_args(files)]) == 0
    a = json.loads(capsys.readouterr().out)
    assert "Zorb" not in a["raw"] and not a["ungrounded"]


def test_chat_errors_name_the_command_that_fixes_them(setup, files, capsys):
    world, kb, tok, _ = setup
    cases = [
        (["--checkpoint", str(files / "nope")], "no checkpoint in .*nope.*dvc repro"),
        (["--kb", str(files / "nokb")], "no KB at .*nokb.*dvc repro build_kb"),
        (["--tokenizer", str(files / "none.json")], "no tokenizer at .*dvc repro pretrain"),
    ]
    for extra, msg in cases:
        args = _args(files)
        i = args.index(extra[0])
        args[i + 1] = extra[1]
        assert cli.main(["chat", "-p", "Who?", *args]) == 2
        err = capsys.readouterr().err
        assert __import__("re").search(msg, err), err
        assert "Traceback" not in err
    with pytest.warns(UserWarning, match="merges"):  # a tiny corpus: a tokenizer nonetheless
        other = Tokenizer.train(iter(["a different corpus entirely"] * 50), vocab_size=300)
    other.save(files / "other.json")
    args = _args(files)
    args[args.index("--tokenizer") + 1] = str(files / "other.json")
    assert cli.main(["chat", "-p", "Who?", *args]) == 2
    assert "was trained with tokenizer" in capsys.readouterr().err


def test_chat_in_a_pseudo_terminal(setup, files):
    """The real program in a real terminal: the prompt, hop 1's search and sources, an answer."""
    world, kb, tok, qs = setup
    pid, fd = pty.fork()
    if pid == 0:  # the child: nanochat chat on the terminal
        os.execvpe(sys.executable, [sys.executable, "-m", "nanochat_core.cli", "chat", *_args(files),
                                    "--max-new-tokens", "8"], {**os.environ, "PYTHONUNBUFFERED": "1"})
    out = b""

    def read_until(marker, count=1, timeout=120):
        nonlocal out
        end = time.time() + timeout
        while out.count(marker) < count and time.time() < end:
            if select.select([fd], [], [], 1)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
        return out.count(marker) >= count
    try:
        assert read_until(b"you> "), out.decode(errors="replace")
        os.write(fd, (qs[0]["question"] + "\n").encode())
        assert read_until(b"answer: "), out.decode(errors="replace")
        assert read_until(b"you> ", count=2), out.decode(errors="replace")  # ready for the next one
        text = out.decode(errors="replace")
        assert f"search 1: {qs[0]['question']}" in text
        top = retrieve(kb, [qs[0]["question"]], 3, "bm25")[0][0]
        assert f"[1] {top['title']} ({top['id']})" in text
        os.write(fd, b"\n")  # an empty line ends the chat
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_default_checkpoint_is_the_most_trained_one_there_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import shutil
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "dvc.yaml"), tmp_path / "dvc.yaml")
    from nanochat_core import dvcfile
    stages = dvcfile.load()
    refrag, rag = (dvcfile.stage_paths(s, stages)["out"] for s in ("refrag_finetune", "rag_finetune"))
    assert chat.default_paths(stages)[0].as_posix() == refrag  # nothing trained: the error will name refrag's
    save_checkpoint(tmp_path / rag, 1, {"w": torch.zeros(1)}, {"step": 1})
    assert chat.default_paths(stages)[0].as_posix() == rag
    save_checkpoint(tmp_path / refrag, 1, {"w": torch.zeros(1)}, {"step": 1})
    assert chat.default_paths(stages)[0].as_posix() == refrag


@pytest.mark.slow
def test_the_trained_model_cites_a_source_for_a_held_out_person():
    """After `dvc repro` (run from the project root): `nanochat chat -p --json` on held-out
    single-hop test questions. The acceptance check of the real model, not of the plumbing."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    qa = root / "data" / "qa" / "test.jsonl"
    if not (root / "checkpoints" / "refrag").is_dir() or not qa.is_file():
        pytest.skip("needs the pipeline's checkpoints and data/qa: run `dvc repro` first")
    qs = [json.loads(line) for line in qa.read_text().splitlines()]
    q = next(q for q in qs if q["type"] == "single" and q["entity_split"] == "test" and q["relation"] == "person.born_in")
    r = subprocess.run([sys.executable, "-m", "nanochat_core.cli", "chat", "-p", q["question"], "--json"],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a = json.loads(r.stdout)
    assert a["sources"] and a["sources"][0], a
    assert any(c["id"] for c in a["citations"]), a


def test_serve_edits_a_live_copy_of_the_kb_never_the_pipelines(setup, files, monkeypatch):
    import nanochat_core.serve as serve_mod
    got = {}
    monkeypatch.setattr(serve_mod, "run", lambda model, tok, kb, **kw: got.update(kb=kb, **kw))
    assert cli.main(["serve", *_args(files), "--port", "8123"]) == 0
    live = files / "kb_live"
    assert got["kb"].dir == live and got["port"] == 8123 and got["host"] == "127.0.0.1"
    assert got["checkpoint"] == files / "ckpt"
    got["kb"].add([{"id": "mine", "text": "A document of my own."}])
    assert cli.main(["serve", *_args(files)]) == 0  # a restart keeps what was added
    assert "mine" in got["kb"].by_id
    assert "mine" not in KnowledgeBase.load(files / "kb").by_id  # the pipeline's KB is untouched
