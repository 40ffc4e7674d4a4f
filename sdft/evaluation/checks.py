"""Task checks: is a rewrite (SDFT selection, Eq. 4) or a model answer (evaluation) correct for its task?

These fix the reference code's known flaws (docs/design.md §3): numbers are tokenised so "3 4" never becomes 34 and
"The answer is N" wins over stray later numbers; function calls are compared by AST (as BFCL does) rather than by
substring, so argument order or quote style does not matter (`ast_contains` finds the call anywhere in the text,
`ast_exact` wants the text to be that one call); code must parse and, when tests exist, pass them in the sandbox.

Each task also offers the reference code's own rule (`paper`, sail-sg/sdft branch `reproduce`, eval/*.py) so a replication
can select and score exactly as the paper did; `SELECTION_RULES` names every rule per task. A rule's check is a plain
function so that a task's target benchmark can score answers with the very check its default rule keeps rewrites by
(`benchmarks.BENCHMARKS` verifies this on import): SDFT is then never scored against the format its selection allowed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable

from sdft.core.registry import check_references, registry
from sdft.data.datasets import DATASETS

META_PHRASES = ("reference answer", "your response", "my response", "your own response", "now it's your turn")


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str  # "ok" or a short snake_case cause, e.g. "wrong_answer", "meta_phrase", "syntax_error"


OK = CheckResult(True, "ok")


def has_meta_phrase(text: str) -> bool:
    """True for rewrites that talk about the distillation prompt instead of answering (reference code's ban list)."""
    lowered = text.lower()
    return any(phrase in lowered for phrase in META_PHRASES) or lowered.lstrip().startswith("your turn")


def paper_meta_ok(text: str) -> bool:
    """The reference's `verify` (eval/gen_distilled_data.py) on the stripped rewrite: the ban list case-insensitively,
    but "Your turn" only as a case-sensitive opening."""
    text = text.strip()
    lowered = text.lower()
    return not any(phrase in lowered for phrase in META_PHRASES) and not text.startswith("Your turn")


def generic_check(prediction: str) -> CheckResult:
    if not prediction.strip():
        return CheckResult(False, "empty")
    if has_meta_phrase(prediction):
        return CheckResult(False, "meta_phrase")
    return OK


# ---- math -------------------------------------------------------------------------------------------------------

# A number token: optional sign (not a minus between digits, as in "16-3"), optional "$", either comma-grouped
# thousands or plain digits, optional decimals, optional "/denominator". Never spans whitespace.
_NUMBER = r"(?<![\w.])(-)?\$?\s?((?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?)"
_NUMBER_RE = re.compile(_NUMBER)
_ANCHORED_RE = re.compile(
    r"(?:answer\s+is\b[\s:=*$\\{(]*(?:boxed\{)?[\s*$]*|\\boxed\{\s*|####\s*)" + _NUMBER, re.IGNORECASE
)


def _normalise(sign: str | None, digits: str) -> str | None:
    plain = digits.replace(",", "")
    try:
        value = Fraction(plain)
    except (ValueError, ZeroDivisionError):
        return None
    if sign:
        value = -value
    if value.denominator == 1:
        return str(value.numerator)
    if "/" in plain:
        return str(value)  # "3/4" stays exact; numbers_equal compares it with decimals
    return (sign or "") + format(Decimal(plain).normalize(), "f")  # "0.50" -> "0.5"


def extract_final_number(text: str) -> str | None:
    """The final numeric answer, normalised ("72", "-3", "0.5", "1200", "3/4"): the last "The answer is N" /
    "\\boxed{N}" / "#### N", else the last number anywhere; None when the text has no number."""
    for matches in (list(_ANCHORED_RE.finditer(text)), list(_NUMBER_RE.finditer(text))):
        for match in reversed(matches):
            normalised = _normalise(match.group(1), match.group(2))
            if normalised is not None:
                return normalised
    return None


def numbers_equal(a: str, b: str, rel_tol: float = 1e-6) -> bool:
    """Numeric equality of two normalised numbers ("0.5" == "1/2"), with a relative tolerance for rounding."""
    try:
        x, y = Fraction(a.replace(",", "")), Fraction(b.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return False
    return abs(x - y) <= rel_tol * max(1, abs(x), abs(y))


# The reference's number rule (eval/utils.py `find_last_integer`): the last run of digits, where runs joined by a comma
# or any whitespace count as one number ("3 4" -> 34) and a minus directly before digits is a sign ("16-3" -> -3).
_PAPER_NUMBER_RE = re.compile(r"-?\d+(?:[,\s]\d+)*(?:\.\d+)?")


def paper_last_integer(text: str) -> int | None:
    """The reference's final answer: the last number as an integer; None when there is none or it has a non-zero
    fractional part (the reference returns a sentinel there that never equals a real answer)."""
    numbers = _PAPER_NUMBER_RE.findall(text)
    if not numbers:
        return None
    whole, _, fraction = re.sub(r"[,\s]", "", numbers[-1]).partition(".")
    return None if fraction and int(fraction) != 0 else int(whole)


def paper_math_check(prediction: str, gold: str) -> CheckResult:
    """The reference's math rule (eval/eval_math.py `check_math`): last integer of the prediction == that of the gold."""
    predicted = paper_last_integer(prediction.strip())
    if predicted is None:
        return CheckResult(False, "no_answer")
    return OK if predicted == paper_last_integer(gold) else CheckResult(False, "wrong_answer")


def math_check(prediction: str, gold: str) -> CheckResult:
    """Final number of `prediction` equals the gold answer ("72", or a worked answer ending "The answer is 72.")."""
    if not prediction.strip():
        return CheckResult(False, "empty")
    gold_number = extract_final_number(gold)
    if gold_number is None:
        return CheckResult(False, "bad_reference")
    predicted = extract_final_number(prediction)
    if predicted is None:
        return CheckResult(False, "no_answer")
    return OK if numbers_equal(predicted, gold_number) else CheckResult(False, "wrong_answer")


# ---- function calls ---------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"^```[\w+-]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)


def _dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _value(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ast.unparse(node)  # a non-literal (variable, expression): compared as normalised source


def parse_function_call(text: str) -> tuple[str, dict] | None:
    """Parse text that is exactly one call `dotted.name(arg, kw=value, ...)` (optionally fenced, quoted or in
    backticks) into (name, {"#0": arg, "kw": value}); None for anything else, including prose around the call."""
    text = text.strip()
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    text = text.strip("`").strip()
    candidates = [text]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        candidates.append(text[1:-1].strip())
    for candidate in candidates:
        try:
            tree = ast.parse(candidate, mode="eval")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            continue
        call = tree.body
        if not isinstance(call, ast.Call):
            continue
        name = _dotted_name(call.func)
        unpacked = any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords)
        if name is None or unpacked:
            return None
        args = {f"#{i}": _value(a) for i, a in enumerate(call.args)}
        args.update({k.arg: _value(k.value) for k in call.keywords})
        return name, args
    return None


def _values_equal(a: Any, b: Any) -> bool:
    """BFCL-style: type-strict except that int and float compare numerically; bools are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_values_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _compare_calls(predicted: tuple[str, dict], expected: tuple[str, dict]) -> CheckResult:
    if predicted[0] != expected[0]:
        return CheckResult(False, "wrong_function")
    got, want = predicted[1], expected[1]
    if got.keys() != want.keys() or not all(_values_equal(got[k], want[k]) for k in want):
        return CheckResult(False, "wrong_arguments")
    return OK


def function_call_check(prediction: str, reference: str) -> CheckResult:
    """`ast_exact`: the prediction is exactly one call to the reference's function with equal arguments, in any order."""
    predicted, expected = parse_function_call(prediction), parse_function_call(reference)
    if expected is None:
        return CheckResult(False, "bad_reference")
    if predicted is None:
        return CheckResult(False, "unparseable_call")
    return _compare_calls(predicted, expected)


def takes_task_format(task: str, text: str) -> bool:
    """Whether an answer takes a training task's output format: exactly one bare call (function_call) or a final
    "The answer is N" / boxed / #### answer (math). On general prompts this is format leakage: a model that answers
    "write a poem" with a call has lost more than any likelihood shows."""
    if task == "function_call":
        return parse_function_call(text) is not None
    return _ANCHORED_RE.search(text) is not None


TASK_FORMATS = ("function_call", "math")  # the task formats `takes_task_format` recognises


_CALL_START_RE = re.compile(r"(?<![\w.])[A-Za-z_][\w]*(?:\s*\.\s*[A-Za-z_]\w*)*\s*\(")


def _closing_paren(text: str, open_at: int) -> int | None:
    """Index of the parenthesis closing the one at `open_at`, skipping brackets inside string literals."""
    depth, quote, i = 0, None, open_at
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return i if char == ")" else None
        i += 1
    return None


def calls_in(text: str) -> list[tuple[str, dict]]:
    """Every function call written anywhere in the text (prose, code blocks, several calls), parsed as by
    `parse_function_call`; nested calls inside a call's arguments are not listed separately."""
    calls, resume = [], 0
    for match in _CALL_START_RE.finditer(text):
        if match.start() < resume:
            continue
        close = _closing_paren(text, match.end() - 1)
        if close is None:
            continue
        parsed = parse_function_call(text[match.start(): close + 1])
        if parsed is not None:
            calls.append(parsed)
            resume = close + 1
    return calls


def function_call_contains_check(prediction: str, reference: str) -> CheckResult:
    """`ast_contains`: some call in the text equals the reference by AST — the paper's intent (Fig. 17 keeps a call
    followed by an explanation) without its string quirks (quote style, spacing, argument order)."""
    expected = parse_function_call(reference)
    if expected is None:
        return CheckResult(False, "bad_reference")
    results = [_compare_calls(call, expected) for call in calls_in(prediction)]
    if not results:
        return CheckResult(False, "unparseable_call")
    if any(r.ok for r in results):
        return OK
    return next((r for r in results if r.reason == "wrong_arguments"), results[0])


def _standardise_call(text: str) -> str:
    """The reference's normalisation (eval/eval_openfunction.py): whitespace runs -> one space, ' -> ", ", " -> ","."""
    return re.sub(r"\s+", " ", text.strip()).replace("'", '"').replace(", ", ",")


_PAPER_CALL_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\((.*)\)")


def paper_call_score(prediction: str, reference: str) -> float:
    """The OpenFunctions metric of the reference (`check_openfunction`, branch `reproduce` after sdft#12): 1 when the
    standardised reference call occurs in the standardised prediction at a word boundary, anywhere in it; else 0.5 when
    the text between the prediction's first "(" and first ")" has as many comma-separated parts as the reference has
    arguments and each part contains the reference argument's value (positional arguments, half credit); else 0."""
    expected, answer = _standardise_call(reference), _standardise_call(prediction)
    match = _PAPER_CALL_RE.match(expected)
    if match is None:
        return 0.0  # the reference raises here; no reference call in our data fails this
    name, params = match.groups()
    if re.search(rf"\b{re.escape(name)}\({re.escape(params)}\)", answer):
        return 1.0
    # Python slice semantics as in the reference: no ")" (find -> -1) drops the last character, no "(" starts at 0.
    inside = answer[max(answer.find("(") + 1, 0): answer.find(")")]
    wanted, given = params.split(","), inside.split(",")
    if len(wanted) != len(given):
        return 0.0
    for argument, part in zip(wanted, given):
        name_value = argument.split("=")
        if len(name_value) < 2 or name_value[1] not in part:
            return 0.0
    return 0.5


def paper_call_check(prediction: str, reference: str) -> CheckResult:
    """`paper` selection for function calls: the reference keeps a rewrite whenever `check_openfunction` is truthy
    (eval/gen_distilled_data.py), so on the `reproduce` branch the positional half-credit case is kept too."""
    credit = paper_call_score(prediction.strip(), reference.strip())
    return OK if credit else CheckResult(False, "no_call_match")


# ---- code -------------------------------------------------------------------------------------------------------

_FENCE = "```"
_PYTHON_TAGS = {"", "python", "python3", "py"}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of every fenced block, read left to right so a closing fence is never taken for an opening
    one; an opening fence is ``` + an optional tag + a line break, and an unclosed block runs to the end."""
    blocks, at = [], 0
    while (start := text.find(_FENCE, at)) != -1:
        line_end = text.find("\n", start)
        tag = text[start + len(_FENCE): len(text) if line_end == -1 else line_end].strip()
        if line_end == -1 or not re.fullmatch(r"[\w+#.-]*", tag):
            at = start + len(_FENCE)  # inline backticks, not a block
            continue
        close = text.find(_FENCE, line_end + 1)
        blocks.append((tag.lower(), text[line_end + 1: len(text) if close == -1 else close]))
        if close == -1:
            break
        at = close + len(_FENCE)
    return blocks


def _python_block(text: str) -> str | None:
    """The first block tagged python / python3 / py or untagged; blocks in other languages are skipped."""
    return next((body for tag, body in code_blocks(text) if tag in _PYTHON_TAGS), None)


def extract_python_code(text: str) -> str:
    """The first ```python / ```py / bare ``` block (an unclosed one runs to the end), else the raw text."""
    block = _python_block(text)
    return text if block is None else block


def code_check(prediction: str, tests: str | None = None, entry_point: str | None = None, stub: str | None = None,
               timeout_s: float = 10) -> CheckResult:
    """A Python block exists and parses; with `tests`, code + tests (+ `check(entry_point)`) pass in the sandbox.

    With a `stub` to complete (HumanEval's signature and docstring) an answer without a Python block is itself the code,
    and the stub completed by it must pass the tests (`sandbox.run_humaneval`): a body continuing the stub parses only
    after it, so the tests decide."""
    code = _python_block(prediction)
    if code is None and stub is not None:
        code = prediction
    if code is None or not code.strip():
        return CheckResult(False, "no_code")
    from sdft.evaluation.sandbox import run_humaneval, run_python

    if stub is not None:
        result = run_humaneval({"prompt": stub, "test": tests, "entry_point": entry_point}, code, timeout_s)
    else:
        try:
            ast.parse(code)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return CheckResult(False, "syntax_error")
        if tests is None:
            return OK
        program = f"{code}\n\n{tests}\n" + (f"check({entry_point})\n" if entry_point else "")
        result = run_python(program, timeout_s=timeout_s)
    if result.status == "passed":
        return OK
    return CheckResult(False, {"timeout": "timeout", "error": "sandbox_error"}.get(result.status, "tests_failed"))


# ---- the reference's MagiCoder rule --------------------------------------------------------------------------------

MAGICODER_OPENERS = ("I have", "Here is", "I implemented")


def paper_code_check(prediction: str) -> CheckResult:
    """The reference's code rule (eval/eval_magicoder.py): a ```python fence and one of three openers, nothing run."""
    text = prediction.strip()
    if "```python" not in text:
        return CheckResult(False, "no_code")
    return OK if text.startswith(MAGICODER_OPENERS) else CheckResult(False, "no_opener")


# ---- registry ---------------------------------------------------------------------------------------------------

def _reference(example: dict) -> tuple:
    return (example["reference"],)


def _tests(example: dict) -> tuple:
    return (example.get("tests"), example.get("entry_point"))


def _nothing(example: dict) -> tuple:
    return ()


def _no_meta_phrase(text: str) -> bool:
    return not has_meta_phrase(text)


def _accept(prediction: str) -> CheckResult:
    return OK


@dataclass(frozen=True)
class SelectionRule:
    """Eq. 4 for one task: a rewrite passing `guard` (it does not talk about the distillation prompt) is kept when
    `check(rewrite, *inputs(example))` passes. The check is kept apart from the guard and the example's layout so that a
    benchmark can score with the same function (`benchmarks.CheckScore`)."""

    check: Callable[..., CheckResult]
    inputs: Callable[[dict], tuple] = _reference  # the check's arguments after the rewrite, from the training example
    guard: Callable[[str], bool] = _no_meta_phrase

    def __call__(self, prediction: str, example: dict) -> CheckResult:
        if not self.guard(prediction):
            return CheckResult(False, "meta_phrase")
        return self.check(prediction, *self.inputs(example))


def _paper(check: Callable[..., CheckResult], inputs: Callable[[dict], tuple] = _reference) -> SelectionRule:
    """The reference's selection (eval/gen_distilled_data.py): its `verify` (meta phrases), then its task check."""
    return SelectionRule(check, inputs, guard=paper_meta_ok)


# Selection rules per task; the first is sdft's default, `paper` the reference's. A benchmark that is a task's target
# names the default rule and scores with its check (verified in `benchmarks`): for function calls, a right call anywhere
# in the answer, since a rewrite that explains its call is kept (the paper's Fig. 17) and must not then score 0.
SELECTION_RULES: dict[str, dict[str, SelectionRule]] = registry("selection check", [
    ("math", {
        "checked": SelectionRule(math_check),
        "paper": _paper(paper_math_check),
    }),
    ("function_call", {
        "ast_contains": SelectionRule(function_call_contains_check),
        "ast_exact": SelectionRule(function_call_check),
        "paper": _paper(paper_call_check),
    }),
    ("code", {
        "checked": SelectionRule(code_check, _tests),
        "paper": _paper(paper_code_check, _nothing),
    }),
    ("generic", {
        "checked": SelectionRule(generic_check, _nothing),
        "paper": _paper(_accept, _nothing),
    }),
])
CHECKS: dict[str, SelectionRule] = {task: next(iter(rules.values())) for task, rules in SELECTION_RULES.items()}
# A dataset's `task` names the check its rewrites are selected by (checked here: datasets sit below evaluation).
check_references("dataset", DATASETS, lambda spec: [spec.task], "selection check", SELECTION_RULES)


def default_rule(task: str) -> str:
    return next(iter(SELECTION_RULES[task]))
