"""The CPU engine where a torch release lacks what its fast paths use: private oneDNN ops missing, the ragged kernel
not built, the int8 ops gone. Generation then takes the plain path (F.linear, matmul attention) with the same greedy
tokens and one warning line per process; an option that needs the missing piece is refused in one line."""

from __future__ import annotations

import logging
import subprocess
import sys
import types

import pytest
import torch
from test_generation import PROMPTS, complete, reference, tiny  # noqa: F401 (tiny: the module's random Llama fixture)

from sdft.core.errors import UserError
from sdft.engines.generation import HFEngine, LeanLlamaStepper, lean_llama, ragged_attention


@pytest.fixture
def fresh_probes():
    """Each probe runs again inside the test (its answer is cached per process), and again after it, un-patched."""
    probes = (ragged_attention.kernel, lean_llama.onednn_dtypes, lean_llama.int8_runs)
    for probe in probes:
        probe.cache_clear()
    yield
    for probe in probes:
        probe.cache_clear()


def without(namespace, name: str):
    """`namespace` (a `torch.ops` namespace) as a torch release without its op `name` would have it."""

    class Hidden:
        def __getattr__(self, attribute):
            if attribute == name:
                raise AttributeError(f"no op named {name}")
            return getattr(namespace, attribute)

    return Hidden()


def assert_plain_greedy(model, tokenizer) -> None:
    """Greedy decoding through the engine yields `model.generate`'s tokens for every prompt."""
    out = complete(model, tokenizer, PROMPTS, max_new_tokens=16, decode_rows=4)
    for i, prompt in enumerate(PROMPTS):
        expected = reference(model, tokenizer, prompt, 16)
        assert (out[i].text, out[i].n_tokens) == (tokenizer.decode(expected, skip_special_tokens=True), len(expected))


def warnings_of(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.WARNING]


@pytest.mark.parametrize("op", ["_reorder_linear_weight", "_linear_pointwise", "_is_mkldnn_bf16_supported"])
def test_missing_onednn_op_falls_back_to_f_linear_with_one_warning(tiny, monkeypatch, caplog, fresh_probes, op):
    model, tokenizer = tiny
    monkeypatch.setattr(torch.ops, "mkldnn", without(torch.ops.mkldnn, op))
    assert LeanLlamaStepper(model, 2).layers[0].qkv.packed is None
    assert_plain_greedy(model, tokenizer)
    assert_plain_greedy(model, tokenizer)  # a second call warns no more
    [warning] = warnings_of(caplog, lean_llama.log.name)
    assert "oneDNN packed linears unavailable" in warning and op in warning and "\n" not in warning


def test_onednn_op_that_disagrees_with_f_linear_is_not_used(monkeypatch, caplog, fresh_probes):
    """An op that still exists but computes something else (a changed signature's meaning) fails the probe too."""
    real = torch.ops.mkldnn
    changed = types.SimpleNamespace(_reorder_linear_weight=real._reorder_linear_weight,
                                    _is_mkldnn_bf16_supported=real._is_mkldnn_bf16_supported,
                                    _linear_pointwise=lambda x, *args: torch.zeros(x.shape[0], 8))
    monkeypatch.setattr(torch.ops, "mkldnn", changed)
    assert lean_llama.onednn_dtypes() == frozenset()
    assert len(warnings_of(caplog, lean_llama.log.name)) == 1


def failing(error: Exception):
    """A stand-in for torch's extension loader that fails as a build does."""

    def load(*args, **kwargs):
        raise error

    return load


@pytest.mark.parametrize("error, reason", [
    (RuntimeError("Error building extension 'sdft_ragged_attention': [1/2] c++ -c ragged_attention.cpp\n"
                  "ragged_attention.cpp:1: error: no member named 'foo' in namespace 'at'"),
     "RuntimeError: Error building extension 'sdft_ragged_attention': [1/2] c++ -c ragged_attention.cpp"),
    (OSError(), "OSError: "),
])
def test_kernel_build_failure_falls_back_to_matmul_attention_with_one_warning(tiny, monkeypatch, caplog, fresh_probes,
                                                                              error, reason):
    import torch.utils.cpp_extension

    model, tokenizer = tiny
    monkeypatch.setattr(torch.utils.cpp_extension, "load", failing(error))
    assert not LeanLlamaStepper(model, 2).ragged
    assert_plain_greedy(model, tokenizer)
    assert_plain_greedy(model, tokenizer)
    assert warnings_of(caplog, ragged_attention.log.name) == [f"ragged decoding attention not built ({reason}); using "
                                                               "matmul attention"]


def test_each_fallback_prints_one_line_to_stderr_once_per_process():
    """Without any logging set up (a library user's process), each warning still reaches stderr, once."""
    script = """
import torch, torch.utils.cpp_extension
from sdft.engines.generation import lean_llama, ragged_attention

def load(*args, **kwargs):
    raise RuntimeError("no compiler")

torch.utils.cpp_extension.load = load
torch.ops.mkldnn = object()
for _ in range(2):
    assert ragged_attention.kernel() is None and lean_llama.onednn_dtypes() == frozenset()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "ragged decoding attention not built (RuntimeError: no compiler); using matmul attention",
        f"oneDNN packed linears unavailable in torch {torch.__version__} (AttributeError: 'object' object has no "
        "attribute '_reorder_linear_weight'); using F.linear"]


def test_missing_int8_ops_refuse_quantize_int8_in_one_line(tiny, monkeypatch, fresh_probes):
    model, tokenizer = tiny
    monkeypatch.setattr(torch.ops, "quantized", without(torch.ops.quantized, "linear_prepack"))
    with pytest.raises(UserError, match="quantize: int8"):
        HFEngine(model, tokenizer, 4, quantize="int8")
