"""Task checks: is a rewrite (SDFT selection, Eq. 4) or a model answer (evaluation) correct for its task?

These fix the reference code's known flaws (DESIGN.md §3): numbers are tokenised so "3 4" never becomes 34 and
"The answer is N" wins over stray later numbers; function calls are compared by AST (as BFCL does) rather than by
substring, so prose around the call fails and argument order or quote style does not matter; code must parse and,
when tests exist, pass them in the sandbox. `paper_call_match` keeps the reference rule for paper-comparable numbers.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable

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


def function_call_check(prediction: str, reference: str) -> CheckResult:
    """The prediction is exactly one call to the reference's function with equal arguments, in any order."""
    predicted, expected = parse_function_call(prediction), parse_function_call(reference)
    if expected is None:
        return CheckResult(False, "bad_reference")
    if predicted is None:
        return CheckResult(False, "unparseable_call")
    if predicted[0] != expected[0]:
        return CheckResult(False, "wrong_function")
    got, want = predicted[1], expected[1]
    if got.keys() != want.keys() or not all(_values_equal(got[k], want[k]) for k in want):
        return CheckResult(False, "wrong_arguments")
    return OK


def paper_call_match(prediction: str, reference: str) -> bool:
    """The reference code's rule: the reference call is a substring of the prediction after removing whitespace
    and turning ' into ". Accepts prose around the call; kept only to reproduce the paper's numbers."""

    def normalise(s: str) -> str:
        return re.sub(r"\s+", "", s).replace("'", '"')

    return normalise(reference) in normalise(prediction)


# ---- code -------------------------------------------------------------------------------------------------------

_PYTHON_BLOCK_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def _python_block(text: str) -> str | None:
    match = _PYTHON_BLOCK_RE.search(text)
    return match.group(1) if match else None


def extract_python_code(text: str) -> str:
    """The first ```python / ```py / bare ``` block (an unclosed one runs to the end), else the raw text."""
    block = _python_block(text)
    return text if block is None else block


def code_check(
    prediction: str, tests: str | None = None, entry_point: str | None = None, timeout_s: float = 10
) -> CheckResult:
    """A Python block exists and parses; with `tests`, code + tests (+ `check(entry_point)`) pass in the sandbox."""
    code = _python_block(prediction)
    if code is None or not code.strip():
        return CheckResult(False, "no_code")
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return CheckResult(False, "syntax_error")
    if tests is None:
        return OK
    from .engines.sandbox import run_python

    program = f"{code}\n\n{tests}\n" + (f"check({entry_point})\n" if entry_point else "")
    result = run_python(program, timeout_s=timeout_s)
    if result.status == "passed":
        return OK
    return CheckResult(False, {"timeout": "timeout", "error": "sandbox_error"}.get(result.status, "tests_failed"))


# ---- registry ---------------------------------------------------------------------------------------------------


def _rejecting_meta(check: Callable[[str, dict], CheckResult]) -> Callable[[str, dict], CheckResult]:
    def guarded(prediction: str, example: dict) -> CheckResult:
        if has_meta_phrase(prediction):
            return CheckResult(False, "meta_phrase")
        return check(prediction, example)

    return guarded


CHECKS: dict[str, Callable[[str, dict], CheckResult]] = {
    "math": _rejecting_meta(lambda p, ex: math_check(p, ex["reference"])),
    "function_call": _rejecting_meta(lambda p, ex: function_call_check(p, ex["reference"])),
    "code": _rejecting_meta(lambda p, ex: code_check(p, ex.get("tests"), ex.get("entry_point"))),
    "generic": lambda p, ex: generic_check(p),
}
