import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import fuzz
from trace_envs import TaskSuite, load_suite
from trace_envs.tasks.math import check_math_answer, last_boxed, load_math_file
from trace_envs.tasks.word_problems import generate_word_problems
from trace_envs.calculator.evaluator import evaluate

RECORDS = [
    {"unique_id": "math/1", "problem": "What is $1+1$?", "solution": "So $\\boxed{2}$."},
    {"id": "gsm-7", "question": "Tom has 3 apples...", "answer": "3 + 4 = 7\n#### 7"},
    {"problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "answer": "\\frac{3}{4}"},
]


def _check_suite(suite: TaskSuite):
    assert [t.answer for t in suite] == ["2", "7", "\\frac{3}{4}"]
    assert suite[0].id == "math/1" and suite[1].id == "gsm-7"
    assert suite.get("gsm-7").prompt.startswith("Tom")
    assert suite[2].grade("0.75").reward == 1.0


def test_jsonl_loader(tmp_path):
    path = tmp_path / "math500.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    _check_suite(load_math_file(path))


def test_json_loader_list_and_dict(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(RECORDS))
    _check_suite(load_math_file(tmp_path / "a.json"))
    (tmp_path / "b.json").write_text(json.dumps({"data": RECORDS}))
    _check_suite(load_math_file(tmp_path / "b.json"))


def test_parquet_loader(tmp_path):
    path = tmp_path / "aime.parquet"
    rows = [{"id": "a1", "problem": "p1", "answer": "204"}, {"id": "a2", "problem": "p2", "answer": "25"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    suite = load_math_file(path)
    assert [t.answer for t in suite] == ["204", "25"] and suite[1].grade("\\boxed{25}").reward == 1.0


def test_load_suite_by_path_is_cached(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(RECORDS[0]))
    assert load_suite(str(path)) is load_suite(str(path))


@pytest.mark.parametrize("content, message", [
    ('{"problem": "p"}\n', "needs one of"),
    ('{"problem": "p", "solution": "no box"}\n', "boxed"),
    ("{not json\n", "invalid JSON"),
    ("[1, 2]\n", "expected an object"),
])
def test_bad_files_fail_clearly(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_math_file(path)


def test_missing_and_unknown_formats(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_math_file(tmp_path / "none.jsonl")
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        load_math_file(tmp_path / "a.csv")
    with pytest.raises(KeyError, match="unknown suite"):
        load_suite("no-such-suite")


@pytest.mark.parametrize("answer, gold, ok", [
    ("42", "42", True),
    ("42.0", "42", True),
    ("1,234", "1234", True),
    ("\\boxed{\\frac{1}{2}}", "1/2", True),
    ("0.5", "\\frac{1}{2}", True),
    ("$x=2$", "2", True),
    ("No", "No", True),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
    ("41", "42", False),
    ("", "42", False),
    ("yes", "No", False),
    ("1" * 1000, "2", False),
])
def test_math_answer_checking(answer, gold, ok):
    assert check_math_answer(answer, gold)[0] is ok


def test_last_boxed_balances_braces():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("no box") is None and last_boxed("\\boxed{open") is None


def test_generated_word_problems_are_deterministic_and_correct():
    a = generate_word_problems(40, steps=3, digits=3, seed=5)
    assert a == generate_word_problems(40, steps=3, digits=3, seed=5)
    assert a != generate_word_problems(40, steps=3, digits=3, seed=6)
    for p in a:
        assert evaluate(p.expression) == p.answer >= 0
        assert p.text.endswith("have now?") and len(p.text.split(". ")) >= 4


def test_generated_suite_knobs_and_split():
    suite = load_suite("arithmetic", steps=4, digits=4, size=200, seed=1)
    assert len(suite) == 200 and all(t.metadata["steps"] == 4 for t in suite)
    train, test = suite.split("train"), suite.split("test")
    assert len(train) + len(test) == 200 and 20 <= len(test) <= 60
    assert not {t.id for t in train} & {t.id for t in test}
    assert suite.split("test")[0] == test[0]  # stable
    with pytest.raises(ValueError):
        suite.split("valid")  # type: ignore[arg-type]


def test_champ_suite():
    suite = load_suite("champ")
    assert len(suite) == 270
    task = suite.get("P_Combinatorics_1")
    assert task.answer == "239" and task.grade("239").reward == 1.0


def test_gsm_symbolic_suite():
    suite = load_suite("gsm_symbolic", size=5, seed=2)
    assert len(suite) == 5 and all(t.answer.lstrip("-").isdigit() for t in suite)
    assert suite[0].grade(suite[0].answer).reward == 1.0


def test_duplicate_ids_rejected():
    from trace_envs import Task
    t = Task("a", "p", "1", lambda r, t: None)
    with pytest.raises(ValueError, match="duplicate"):
        TaskSuite("s", [t, t])


_not_an_int = (st.text(st.characters(categories=["L"]), min_size=1, max_size=5) | st.none()
               | st.lists(st.integers(), max_size=2) | st.floats().filter(lambda x: not x.is_integer()))


@fuzz.examples(100)
@given(name=st.sampled_from(["steps", "digits", "size", "seed"]), value=_not_an_int)
def test_a_suite_option_of_the_wrong_type_is_a_value_error_naming_it(name, value):
    with pytest.raises(ValueError, match=f"suite 'arithmetic': option {name}: "):
        load_suite("arithmetic", **{name: value})


def test_suite_options_are_read_by_their_type_hints():
    from trace_envs.tasks.suites import arithmetic_suite, register_suite

    assert len(load_suite("arithmetic", size="12", seed="3")) == 12
    with pytest.raises(ValueError, match="option stepz: Unexpected keyword argument"):
        load_suite("arithmetic", stepz=2)

    def factory(*, size: int = 3, extra: "OnlyForTypeCheckers | None" = None):  # noqa: F821
        return arithmetic_suite(size=size)

    register_suite("test-unresolvable-hints", factory)  # registered unchecked
    assert len(load_suite("test-unresolvable-hints", size=4)) == 4

