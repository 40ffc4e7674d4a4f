"""Pairwise judges for the AlpacaEval win rate (paper: GPT-4 against text-davinci-003 references).

A judge answers one question: which of two outputs is better for an instruction. It can be any
OpenAI-compatible chat endpoint (GPT-4, or a local llama.cpp server) or a local Hugging Face model;
`judge_win` asks in both orders so that a judge's position bias cancels out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from typing import Any, Iterator, Protocol

from sdft.core.errors import UserError
from sdft.core.jsonl import ResumableJsonl

JUDGE_PROMPT = """Compare two responses to the same instruction. Choose the one that follows the instruction \
more helpfully, accurately and completely. Do not let the order or the length of the responses sway you.

## Instruction
{instruction}

## Output (a)
{output_a}

## Output (b)
{output_b}

Which output is better? Answer with exactly "Output (a)" or "Output (b)"."""

# The judge's answer up to the letter; HFJudge scores the letter that would follow it.
ANSWER_PREFIX = "Output ("

_OUTPUT_LETTER = re.compile(r"output\s*\(?\s*([ab])\b", re.IGNORECASE)
_BARE_LETTER = re.compile(r"^\W*([ab])\W*$", re.IGNORECASE)


class PairwiseJudge(Protocol):
    """`compare` returns the preference for output A: 1.0 A better, 0.0 B better, 0.5 tie, None unparseable."""

    identity: str

    def compare(self, instruction: str, output_a: str, output_b: str) -> float | None: ...


def render_prompt(instruction: str, output_a: str, output_b: str) -> str:
    return JUDGE_PROMPT.format(instruction=instruction, output_a=output_a, output_b=output_b)


def parse_verdict(text: str) -> float | None:
    """Read 'Output (a)' / 'Output (b)' (or a bare letter) from a judge's reply; None when absent or both named."""
    letters = {m.lower() for m in _OUTPUT_LETTER.findall(text)}
    if not letters:
        bare = _BARE_LETTER.match(text)
        letters = {bare.group(1).lower()} if bare else set()
    if letters == {"a"}:
        return 1.0
    if letters == {"b"}:
        return 0.0
    return None


class OpenAIJudge:
    """A judge behind an OpenAI-compatible `/chat/completions` endpoint, called with the standard library
    so that the toolkit does not depend on the `openai` package."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120,
        max_tokens: int = 8,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.identity = f"openai-compatible:{self.base_url} model={model}"

    def compare(self, instruction: str, output_a: str, output_b: str) -> float | None:
        reply = self._chat(render_prompt(instruction, output_a, output_b))
        return parse_verdict(reply)

    def _chat(self, prompt: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.api_key_env)
        if api_key:  # local servers need no key
            headers["Authorization"] = f"Bearer {api_key}"
        url = f"{self.base_url}/chat/completions"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            raise UserError(f"judge {url} answered HTTP {error.code}: {detail}") from error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise UserError(f"cannot reach the judge at {url} ({reason}); is the server running?") from error
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as error:
            raise UserError(f"judge {url} returned no chat completion: {json.dumps(payload)[:300]}") from error


class HFJudge:
    """A local causal LM judge. Instead of generating, it renders the prompt with the chat template, appends
    the answer prefix 'Output (' and compares the next-token scores of 'a' and 'b': one forward pass, and
    never an unparseable reply."""

    def __init__(self, model: Any, tokenizer: Any, identity: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.identity = identity or f"hf:{model.name_or_path}"

    @classmethod
    def from_pretrained(cls, path: str) -> HFJudge:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not os.path.isdir(path):
            raise UserError(f"judge model folder not found: {path}")
        return cls(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), f"hf:{path}")

    def compare(self, instruction: str, output_a: str, output_b: str) -> float | None:
        import torch

        text = self._render(render_prompt(instruction, output_a, output_b)) + ANSWER_PREFIX
        ids_a = self.tokenizer.encode(text + "a", add_special_tokens=False)
        ids_b = self.tokenizer.encode(text + "b", add_special_tokens=False)
        # The two continuations share the prompt tokens and first differ at the answer letter.
        split = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y)
        prefix = torch.tensor([ids_a[:split]], device=self.model.device)
        with torch.inference_mode():
            logits = self.model(input_ids=prefix).logits[0, -1]
        score_a, score_b = logits[ids_a[split]].item(), logits[ids_b[split]].item()
        if score_a == score_b:
            return 0.5
        return 1.0 if score_a > score_b else 0.0

    def _render(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # A base model without a template: the special tokens it expects (BOS) are added here.
        bos = self.tokenizer.bos_token or ""
        return f"{bos}{prompt}\n\n"


def judge_win(judge: PairwiseJudge, instruction: str, candidate: str, reference: str) -> float | None:
    """The candidate's win score against the reference in [0, 1], judged in both orders to cancel position
    bias: 1 win, 0 loss, 0.5 a tie or a split verdict. One unparseable order leaves the other; None if both."""
    as_a = judge.compare(instruction, candidate, reference)
    as_b = judge.compare(instruction, reference, candidate)
    scores = [s for s in (as_a, None if as_b is None else 1.0 - as_b) if s is not None]
    return sum(scores) / len(scores) if scores else None


class VerdictCache:
    """A judge whose every verdict is appended to a JSONL file as it comes, so a killed evaluation asks the judge again
    only about pairs it had not answered (a remote judge costs money and time). Keyed by the judge's identity and the
    exact texts, so another judge, prompt or output never reuses a verdict."""

    def __init__(self, judge: PairwiseJudge, path: str | os.PathLike):
        self.judge = judge
        self.identity = judge.identity
        self.store = ResumableJsonl(path, key=lambda row: row["key"])

    def compare(self, instruction: str, output_a: str, output_b: str) -> float | None:
        key = hashlib.sha256(json.dumps([self.identity, instruction, output_a, output_b]).encode()).hexdigest()
        if key not in self.store:
            self.store.add({"key": key, "verdict": self.judge.compare(instruction, output_a, output_b)})
        return self.store.done[key]["verdict"]

    @classmethod
    @contextlib.contextmanager
    def around(cls, judge: PairwiseJudge | None, path: str | os.PathLike) -> Iterator[PairwiseJudge | None]:
        """`judge` with its verdicts kept in `path` for the block (None stays None); the file is completed when the
        block finishes and left resumable when it is interrupted."""
        if judge is None:
            yield None
            return
        cache = cls(judge, path)
        try:
            yield cache
        finally:
            cache.store.close()
        cache.store.finalize(list(cache.store.done))


def make_judge(
    spec: str | None = None,
    judge_url: str | None = None,
    judge_model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
) -> PairwiseJudge | None:
    """Build the judge the user asked for, or None when none was asked for.

    Either `spec`, a judge's identity string ('hf:PATH' or 'openai-compatible:URL model=NAME', so a report's
    recorded judge can be reused), or the CLI flags: --judge-url URL --judge-model NAME for an
    OpenAI-compatible server, --judge-model hf:PATH for a local Hugging Face model.
    """
    if spec and (judge_url or judge_model):
        raise UserError("give the judge either as one spec or as --judge-url/--judge-model, not both")
    if spec:
        if spec.startswith("openai-compatible:"):
            match = re.fullmatch(r"openai-compatible:(\S+) model=(\S+)", spec)
            if not match:
                raise UserError(f"judge spec {spec!r} is not 'openai-compatible:URL model=NAME'")
            judge_url, judge_model = match.groups()
        elif spec.startswith("hf:"):
            judge_model = spec
        else:
            raise UserError(f"judge spec {spec!r} is neither 'hf:PATH' nor 'openai-compatible:URL model=NAME'")
    if judge_model and judge_model.startswith("hf:"):
        if judge_url:
            raise UserError("--judge-url is for an OpenAI-compatible server; a hf: judge model runs locally")
        return HFJudge.from_pretrained(judge_model[len("hf:"):])
    if judge_url and judge_model:
        return OpenAIJudge(judge_url, judge_model, api_key_env=api_key_env)
    if judge_url or judge_model:
        raise UserError("an OpenAI-compatible judge needs both --judge-url and --judge-model")
    return None
