"""QA metrics, corpus files, QA-format loaders and the generated multi-hop world."""

import csv
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trace_envs.search.corpus import Corpus, Passage, load_corpus
from trace_envs.search.metrics import best_em_f1, exact_match, normalize_answer, token_f1
from trace_envs.search.qa import QAGrader, context_passages, generated_suite, load_qa_file
from trace_envs.search.world import RELATIONS, build_world


# ----------------------------------------------------------------- metrics
def test_normalisation_follows_squad():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear and the plum") == "apple pear and plum"


def test_em_and_f1():
    assert exact_match("the Paris", "paris") == 1.0
    assert token_f1("Paris France", "Paris") == pytest.approx(2 / 3)
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("", "Paris") == 0.0


def test_yes_no_get_no_partial_credit():
    assert token_f1("yes", "yes") == 1.0
    assert token_f1("yes it is", "yes") == 0.0
    assert token_f1("no", "noanswer") == 0.0


def test_best_over_aliases():
    assert best_em_f1("NYC", ["New York City", "NYC"]) == (1.0, 1.0)
    assert best_em_f1("x", []) == (0.0, 0.0)


@given(st.text(max_size=40), st.text(max_size=40))
def test_f1_bounded_and_symmetric(a, b):
    f = token_f1(a, b)
    assert 0.0 <= f <= 1.0 and f == pytest.approx(token_f1(b, a))
    if normalize_answer(a) and exact_match(a, b):
        assert f == 1.0


def test_grader_threshold_and_em_mode():
    from trace_envs.tasks.base import Task

    task = Task("t", "q?", ["Barack Obama"], QAGrader())
    assert QAGrader()("Obama", task).reward == 1.0  # F1 = 2/3
    assert QAGrader(threshold=0.9)("Obama", task).reward == 0.0
    grade = QAGrader(mode="em")("obama", task)
    assert grade.reward == 0.0 and grade.details == {"em": 0.0, "f1": pytest.approx(2 / 3)}
    assert QAGrader(mode="em")("barack obama.", task).reward == 1.0


# ------------------------------------------------------------------ corpus
def test_corpus_reads_both_shapes(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        json.dumps({"id": "a", "title": "Alpha", "text": "first"}) + "\n\n"
        + json.dumps({"id": 7, "contents": '"Beta"\nsecond line\nmore'}) + "\n"
        + json.dumps({"contents": "Gamma\nthird"}) + "\n"
    )
    corpus = load_corpus(path)
    assert list(corpus) == [Passage("a", "Alpha", "first"),
                            Passage("7", "Beta", "second line\nmore"),
                            Passage("3", "Gamma", "third")]
    assert corpus[1].contents == "Beta\nsecond line\nmore"


def test_corpus_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1, "text": "ok"}\n{"id": 2, "title": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*neither"):
        load_corpus(path)
    path.write_text('{"id": 1, "text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_corpus(path)


def test_corpus_round_trip_and_fingerprint(tmp_path):
    corpus = Corpus([Passage("1", "T", "x"), Passage("2", "U", "y")])
    corpus.write_jsonl(tmp_path / "c.jsonl")
    again = load_corpus(tmp_path / "c.jsonl")
    assert list(again) == list(corpus) and again.fingerprint() == corpus.fingerprint()
    assert Corpus([Passage("1", "T", "x")]).fingerprint() != corpus.fingerprint()


# ----------------------------------------------------------------- loaders
HOTPOT = [{"_id": "5a8b", "question": "Which band?", "answer": "Oasis", "type": "bridge",
           "level": "hard", "supporting_facts": [["Oasis", 0]],
           "context": [["Oasis", ["Oasis is a band.", " From Manchester."]],
                       ["Blur", ["Blur is a band."]]]}]
TWOWIKI = [{"_id": "2w1", "type": "compositional", "question": "Who is the father?",
            "answer": "John", "supporting_facts": [["Doc", 0]], "evidences": [["a", "b", "c"]],
            "context": [["Doc", ["John is the father."]], ["Oasis", ["Oasis is a band.",
                                                                      " From Manchester."]]]}]
MUSIQUE = [{"id": "2hop__1", "question": "Where was X born?", "answer": "Rome",
            "answer_aliases": ["Roma"], "answerable": True,
            "paragraphs": [{"idx": 0, "title": "X", "paragraph_text": "X was born in Rome."}],
            "question_decomposition": []}]
UNIFIED = [{"id": "test_0", "question": "Who wrote Hamlet?",
            "golden_answers": ["William Shakespeare", "Shakespeare"]}]
BAMBOOGLE = [{"Question": "Who was president when X?", "Answer": "Lincoln"}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt, filename, rows, golds", [
    ("hotpotqa", "hotpot_dev.json", HOTPOT, ["Oasis"]),
    ("2wiki", "2wiki_dev.json", TWOWIKI, ["John"]),
    ("musique", "musique_dev.jsonl", MUSIQUE, ["Rome", "Roma"]),
    ("unified", "nq_test.jsonl", UNIFIED, ["William Shakespeare", "Shakespeare"]),
    ("bamboogle", "bamboogle.json", BAMBOOGLE, ["Lincoln"]),
])
def test_loaders_read_every_format(tmp_path, fmt, filename, rows, golds):
    path = tmp_path / filename
    if filename.endswith(".jsonl"):
        _jsonl(path, rows)
    else:
        path.write_text(json.dumps(rows))
    for how in ("auto", fmt):
        suite = load_qa_file(path, format=how)
        assert len(suite) == 1
        task = suite[0]
        assert task.answer == golds and task.metadata["dataset"] == fmt
        assert task.prompt == rows[0].get("question", rows[0].get("Question"))
        assert task.grade(golds[-1]).reward == 1.0 and task.grade("zzz").reward == 0.0


def test_bamboogle_csv(tmp_path):
    path = tmp_path / "bamboogle.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["Question", "Answer"])
        writer.writeheader()
        writer.writerows(BAMBOOGLE * 2)
    suite = load_qa_file(path)
    assert [t.id for t in suite] == ["bamboogle-0", "bamboogle-1"]
    assert suite[1].answer == ["Lincoln"]


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"x.jsonl:2: invalid JSON"):
        load_qa_file(_broken(tmp_path / "x.jsonl"))
    with pytest.raises(ValueError, match="cannot tell the QA format"):
        load_qa_file(_jsonl(tmp_path / "y.jsonl", [{"foo": 1}]))
    with pytest.raises(ValueError, match="lacks field"):
        load_qa_file(_jsonl(tmp_path / "z.jsonl", [{"id": "1", "golden_answers": ["a"]}]))
    with pytest.raises(ValueError, match="unknown QA format"):
        load_qa_file(_jsonl(tmp_path / "w.jsonl", UNIFIED), format="squad")


def _broken(path):
    path.write_text(json.dumps(UNIFIED[0]) + "\n{oops\n")
    return path


def test_context_passages_build_a_corpus(tmp_path):
    hotpot = tmp_path / "h.json"
    hotpot.write_text(json.dumps(HOTPOT + TWOWIKI))
    records = list(context_passages(hotpot))
    assert [r["title"] for r in records] == ["Oasis", "Blur", "Doc"]  # the shared one once
    assert records[0]["text"] == "Oasis is a band. From Manchester."
    musique = _jsonl(tmp_path / "m.jsonl", MUSIQUE)
    assert list(context_passages(musique)) == [
        {"id": "ctx0", "title": "X", "text": "X was born in Rome."}]


# --------------------------------------------------------- generated world
def test_world_is_deterministic_and_seed_dependent():
    a, b = build_world(people=30, questions=50, seed=5), build_world(people=30, questions=50, seed=5)
    assert list(a.corpus) == list(b.corpus) and a.questions == b.questions
    assert build_world(people=30, questions=50, seed=6).questions != a.questions


def test_world_questions_are_answerable_from_the_corpus():
    world = build_world(people=40, distractors=3, questions=200, hops=(2, 3, 4), seed=1)
    by_id = {p.id: p for p in world.corpus}
    assert len(world.questions) == 200
    assert {len(q.chain) for q in world.questions} == {2, 3, 4}
    for q in world.questions:
        assert len(set(q.path)) == len(q.path)  # no entity twice on a chain
        for subject, rel, obj, pid in zip(q.path, q.chain, q.path[1:], q.supporting):
            assert RELATIONS[rel].extract(subject, by_id[pid].text) == obj
        assert q.answer == q.path[-1] and q.path[0] in q.question


def test_world_knobs_scale_the_corpus():
    small = build_world(people=20, distractors=0, questions=10, seed=0)
    assert len(small.corpus) == len(small.entities)
    big = build_world(people=80, distractors=4, questions=10, hops=2, seed=0)
    assert len(big.corpus) == 5 * len(big.entities) and len(big.entities) > len(small.entities)
    assert all(len(q.chain) == 2 for q in big.questions)
    with pytest.raises(ValueError, match="hops"):
        build_world(hops=0)


def test_generated_suite_splits_and_grades():
    suite = generated_suite(people=30, questions=100, seed=2)
    train, test = suite.split("train"), suite.split("test")
    assert len(train) + len(test) == 100 and not {t.id for t in train} & {t.id for t in test}
    task = suite[0]
    assert task.grade(task.answer[0]).reward == 1.0
    assert task.metadata["hops"] == len(task.metadata["chain"])
    assert "seed=2" in suite.name and generated_suite(people=30, questions=100, seed=2).name == suite.name
