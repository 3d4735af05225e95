"""benchmarks.rl_headroom's command line: a missing warm-up names the path and the command that
makes it; impossible arguments are refused (the counting itself: tests/test_rl.py)."""

import pytest

from benchmarks import rl_headroom


def test_missing_checkpoint_names_the_path_and_the_command(bare_clone):
    with pytest.raises(SystemExit, match=r"refrag_sft does not exist; run `dvc repro refrag_finetune`"):
        rl_headroom.main(["--root", str(bare_clone), "--out", str(bare_clone / "r.json")])
    assert not (bare_clone / "r.json").exists()


def test_rl_split_without_rl_people_says_which_key_makes_them(bare_clone):
    for d in ("checkpoints/refrag_sft", "data/kb", "data/qa"):  # a repro'd clone of a world without RL people
        (bare_clone / d).mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"rl.jsonl does not exist: the world has no RL people; set "
                                         r"documents.world.rl_fraction > 0"):
        rl_headroom.main(["--root", str(bare_clone), "--split", "rl", "--out", str(bare_clone / "r.json")])


@pytest.mark.parametrize("args", [["--group", "0"], ["--temperatures", "0"]])
def test_bad_arguments_are_refused(args, capsys):
    with pytest.raises(SystemExit) as e:
        rl_headroom.main(args)
    assert e.value.code == 2 and "--group must be >= 1" in capsys.readouterr().err


def test_hop1_key_splits_by_whether_the_questions_own_top_k_shows_the_answer_document():
    """--by hop1: the answer's document (the last hop's) on screen after hop 1, or not; the bridge's
    document alone does not count."""
    from nanochat_core.retrieval import KnowledgeBase
    docs = [{"id": "acme", "title": "Acme", "text": "The founder of Acme is Bob Smith. Acme makes rockets."},
            {"id": "bob", "title": "Bob Smith", "text": "Bob Smith was born in Paris."},
            {"id": "eve", "title": "Eve Stone", "text": "Eve Stone was born in Rome."}]
    kb = KnowledgeBase.build(docs, None, ["bm25"])
    q = {"id": "q", "type": "2hop", "question": "Where was the founder of Acme born?", "gold_doc_ids": [["acme"], ["bob"]]}
    bridge_only = {**q, "id": "r", "gold_doc_ids": [["bob"], ["eve"]]}
    key = rl_headroom.hop1_key([q, bridge_only], kb, 2, "bm25")
    assert key(q) == "2hop answer in hop 1" and key(bridge_only) == "2hop answer not in hop 1"
    assert rl_headroom.hop1_key([q], kb, 1, "bm25")(q) == "2hop answer not in hop 1"  # top-1 is Acme alone
    unnamed = {**q, "id": "s", "gold_doc_ids": []}  # a question naming no gold document never counts as shown
    assert rl_headroom.hop1_key([unnamed], kb, 3, "bm25")(unnamed) == "2hop answer not in hop 1"
