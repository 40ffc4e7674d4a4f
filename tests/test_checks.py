import pytest

from sdft.evaluation.checks import (
    CHECKS,
    CheckResult,
    calls_in,
    code_blocks,
    code_check,
    extract_final_number,
    extract_python_code,
    function_call_check,
    function_call_contains_check,
    generic_check,
    has_meta_phrase,
    math_check,
    numbers_equal,
    paper_call_score,
    parse_function_call,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She has 3 4 apples", "4"),  # the reference regex joined these into 34
        ("It costs $1,200 in total.", "1200"),
        ("The answer is 18. Check: 16-3-4=9", "18"),
        ("The answer is 5. Wait, recount. The answer is 7.", "7"),
        ("The temperature drops to -3 degrees.", "-3"),
        ("16-3 = 13", "13"),
        ("The answer is 0.50", "0.5"),
        ("The answer is 5.0.", "5"),
        ("The final answer is **$1,200**.", "1200"),
        ("so \\boxed{72} is it", "72"),
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("The answer is: -0.25", "-0.25"),
        ("About 3/4 of them", "3/4"),
        ("6/3 groups", "2"),
        ("1/0 or 5", "5"),
        ("no digits here", None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_numbers_equal():
    assert numbers_equal("0.5", "1/2")
    assert numbers_equal("5", "5.0")
    assert numbers_equal("1200", "1,200")
    assert not numbers_equal("34", "4")
    assert not numbers_equal("x", "1")


def test_math_check():
    gold = "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day.\nThe answer is 18."
    assert math_check("9 * 2 = 18 dollars. The answer is $18.", gold) == CheckResult(True, "ok")
    assert math_check("The answer is 18.", "18").ok
    assert math_check("The answer is 18", "#### 18").ok
    assert math_check("She makes 3 4 dollars", "34") == CheckResult(False, "wrong_answer")
    assert math_check("I am not sure.", gold) == CheckResult(False, "no_answer")
    assert math_check("  ", gold) == CheckResult(False, "empty")
    assert math_check("The answer is 0.5", "1/2").ok


@pytest.mark.parametrize(
    "text",
    [
        "As in the reference answer, it is 4.",
        "Your response should be 4.",
        "In my response I said 4.",
        "Compare with your own response.",
        "Now it's your turn: 4.",
        "  Your turn. The answer is 4.",
        "YOUR RESPONSE: 4",
    ],
)
def test_meta_phrases_rejected(text):
    assert has_meta_phrase(text)
    for kind, example in [("math", {"reference": "4"}), ("generic", {"reference": "x"})]:
        assert CHECKS[kind](text, example) == CheckResult(False, "meta_phrase")


def test_meta_phrase_absent():
    assert not has_meta_phrase("It is my turn to cook; the answer is 4.")
    assert generic_check("Paris.").ok
    assert generic_check(" \n") == CheckResult(False, "empty")


REF = 'flight.book(origin="Los Angeles", destination="New York", passengers=2, date="June 15th")'


@pytest.mark.parametrize(
    "prediction, reason",
    [
        (REF, "ok"),
        ("flight.book(passengers=2, date='June 15th', destination='New York', origin='Los Angeles')", "ok"),
        ('flight.book(origin="Los Angeles", destination="New York", passengers=2.0, date="June 15th")', "ok"),
        (f"```python\n{REF}\n```", "ok"),
        (f"`{REF}`", "ok"),
        (f"'{REF}'", "ok"),
        (f"Sure! Here is the call: {REF}", "unparseable_call"),
        (f"{REF}\nThis books the flight.", "unparseable_call"),
        (REF.replace("passengers=2", 'passengers="2"'), "wrong_arguments"),
        (REF.replace("New York", "Boston"), "wrong_arguments"),
        (REF.replace(', date="June 15th"', ""), "wrong_arguments"),
        (REF.replace("flight.book", "flight.reserve"), "wrong_function"),
    ],
)
def test_function_call_check(prediction, reason):
    assert function_call_check(prediction, REF).reason == reason


def test_parse_function_call():
    expected = ("math.hypot", {"#0": 3, "#1": 4, "z": [1, 2], "w": "x + 1"})
    assert parse_function_call("math.hypot(3, 4, z=[1, 2], w=x + 1)") == expected
    assert parse_function_call("f(**kw)") is None
    assert parse_function_call("f(a=1); g()") is None
    assert parse_function_call("f(a=1") is None
    assert parse_function_call("x = f(a=1)") is None


def test_function_call_values_are_type_strict():
    assert function_call_check("f(a=True)", "f(a=1)").reason == "wrong_arguments"
    assert function_call_check("f(a=[1, 2.0])", "f(a=[1, 2])").ok
    assert function_call_check("f(a={'k': 'v'})", 'f(a={"k": "v"})').ok


def test_paper_call_score_accepts_prose():
    assert paper_call_score(f"Sure! Here it is: {REF.replace(chr(34), chr(39))} Enjoy.", REF) == 1.0
    assert paper_call_score(REF.replace("passengers=2", "passengers=3"), REF) == 0.0


def test_calls_in_finds_every_call_outside_and_inside_prose():
    text = "First `a.b(x=1)`, then c(d(2), s=')(') and e(. Done: f()"
    assert calls_in(text) == [("a.b", {"x": 1}), ("c", {"#0": "d(2)", "s": ")("}), ("f", {})]


@pytest.mark.parametrize(
    "prediction, reason",
    [
        (f"Sure! Here is the call: {REF}", "ok"),
        (f"{REF}\nThis books the flight.", "ok"),
        ("```python\nflight.book(passengers=2, date='June 15th', destination='New York', origin='Los Angeles')\n```", "ok"),
        (f"First search.flights(date='x'), then {REF.replace('New York', 'Boston')}", "wrong_arguments"),
        ("search.flights(date='x')", "wrong_function"),
        ("No call here.", "unparseable_call"),
    ],
)
def test_function_call_contains_check(prediction, reason):
    assert function_call_contains_check(prediction, REF).reason == reason


def test_extract_python_code():
    assert extract_python_code("Here:\n```python\nx = 1\n```\nand ```py\ny = 2\n```") == "x = 1\n"
    assert extract_python_code("```\nz = 3\n```") == "z = 3\n"
    assert extract_python_code("```py\nw = 4\n") == "w = 4\n"
    assert extract_python_code("just text") == "just text"
    assert extract_python_code("```javascript\nlet a;\n```") == "```javascript\nlet a;\n```"


def test_code_blocks_pair_fences_left_to_right():
    # a closing fence is never read as an opening one
    assert code_blocks("```bash\npip install x\n```\nThen:\n```python\nx = 1\n```") == [("bash", "pip install x\n"),
                                                                                        ("python", "x = 1\n")]
    assert extract_python_code("```bash\npip install x\n```\nThen:\n```python\nx = 1\n```") == "x = 1\n"
    assert extract_python_code("```cpp\nint x;\n```\nSome text after it.") == "```cpp\nint x;\n```\nSome text after it."
    assert code_blocks("inline ```x``` only") == []


def test_code_check_after_another_language_block():
    good = "Install it:\n```bash\npip install numpy\n```\nThen:\n```python\nimport numpy\nx = 1\n```"
    assert code_check(good) == CheckResult(True, "ok")
    assert code_check("```cpp\nint main() { return 0; }\n```\nThat is all.") == CheckResult(False, "no_code")


def test_code_check():
    good = "Here is the function:\n```python\ndef add(a, b):\n    return a + b\n```"
    tests = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    assert code_check(good) == CheckResult(True, "ok")
    assert code_check(good, tests, "add") == CheckResult(True, "ok")
    assert code_check(good.replace("a + b", "a - b"), tests, "add") == CheckResult(False, "tests_failed")
    assert code_check("```python\ndef add(a, b)\n    return a + b\n```") == CheckResult(False, "syntax_error")
    assert code_check("def add(a, b): return a + b") == CheckResult(False, "no_code")
    assert CHECKS["code"]("Compared with the reference answer:\n" + good, {"reference": good}).reason == "meta_phrase"
    assert CHECKS["code"](good, {"reference": good, "tests": tests, "entry_point": "add"}).ok


def test_code_check_completes_a_stub():
    """HumanEval's score: with a stub, unfenced text is the completion and the tests decide, as the harness runs it."""
    stub = 'def add(a, b):\n    """Add two numbers."""\n'
    tests = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    assert code_check("    return a + b\n", tests, "add", stub).ok  # a body continuing the stub
    assert code_check("Here:\n```python\ndef add(a, b):\n    return a + b\n```", tests, "add", stub).ok
    assert code_check("    return a - b\n", tests, "add", stub) == CheckResult(False, "tests_failed")
    assert code_check("    return a + b\n", tests, "add") == CheckResult(False, "no_code")  # without one: fenced only


def test_registry_kinds():
    assert set(CHECKS) == {"math", "function_call", "code", "generic"}
    assert CHECKS["function_call"](REF, {"reference": REF}).ok
    assert CHECKS["math"]("The answer is 3.", {"reference": "The answer is 3."}).ok


@pytest.mark.parametrize("task, text, expected", [
    ("function_call", 'get_weather(city="Paris")', True),
    ("function_call", '```python\nget_weather(city="Paris")\n```', True),
    ("function_call", 'Sure! Call get_weather(city="Paris") to know.', False),
    ("function_call", "Roses are red,\nviolets are blue.", False),
    ("math", "3 + 4 = 7. The answer is 7.", True),
    ("math", "#### 12", True),
    ("math", "Roses are red, 2 violets are blue.", False),
])
def test_format_leakage_detects_a_task_format(task, text, expected):
    """On a general prompt, an answer in the training task's format is leakage (IFEval's `<task>_format` extras)."""
    from sdft.evaluation.checks import takes_task_format

    assert takes_task_format(task, text) is expected
