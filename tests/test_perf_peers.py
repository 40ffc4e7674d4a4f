"""How the throughput measurement picks each peer's configuration and the published ratio (perf/peer_throughput.py,
perf/training_throughput.py), with fake rates: each peer runs at its fastest tried setting, every tried setting is
recorded, and sdft is compared with the fastest peer actually measured."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
import peer_throughput  # noqa: E402  (perf/ is a folder of scripts, not a package)
import training_throughput  # noqa: E402


def test_ctranslate2_batchings_count_tokens_on_one_worker_and_on_one_worker_a_thread():
    batchings = peer_throughput.ctranslate2_batchings(300, 2, (16, 64))
    assert list(batchings.values()) == [
        {"max_batch_size": 4800, "batch_type": "tokens", "inter_threads": 1},
        {"max_batch_size": 4800, "batch_type": "tokens", "inter_threads": 2},
        {"max_batch_size": 19200, "batch_type": "tokens", "inter_threads": 1},
        {"max_batch_size": 19200, "batch_type": "tokens", "inter_threads": 2}]
    assert "max_batch_size 4800 tokens (~16 prompts), inter_threads 2" in batchings
    assert len(peer_throughput.ctranslate2_batchings(300, 1, (16, 64))) == 2  # one thread: one worker only


def test_ctranslate2_runs_its_fastest_batching_then_its_fastest_compute_type_and_records_every_trial():
    batchings = peer_throughput.ctranslate2_batchings(300, 2, (16, 32, 64))
    by_batch = {(4800, 1): 110.0, (4800, 2): 120.0, (9600, 1): 125.0, (9600, 2): 137.4, (19200, 1): 100.0,
                (19200, 2): 130.0}
    by_type = {"int8": 1.0, "int8_float32": 1.1, "float32": 0.5}
    tried = []

    def rate(configuration):
        tried.append(configuration)
        batching = configuration["max_batch_size"], configuration["inter_threads"]
        return by_batch[batching] * by_type[configuration["compute_type"]]

    configuration, trials = peer_throughput.ctranslate2_configuration(list(by_type), batchings, rate)
    assert configuration == {"compute_type": "int8_float32", "max_batch_size": 9600, "batch_type": "tokens",
                             "inter_threads": 2}
    # every batching in the first compute type, then every compute type in the fastest batching
    assert [c["compute_type"] for c in tried] == ["int8"] * 6 + ["int8", "int8_float32", "float32"]
    assert trials["batching_trial_tok_s"] == {label: by_batch[b["max_batch_size"], b["inter_threads"]]
                                              for label, b in batchings.items()}
    assert trials["compute_type_trial_tok_s"] == pytest.approx({"int8": 137.4, "int8_float32": 151.14, "float32": 68.7})


def test_llama_server_runs_its_fastest_slot_count_and_records_every_trial(monkeypatch):
    monkeypatch.setattr(peer_throughput, "llama_server_binary", lambda: Path("llama-server"))
    rates, sent = {16: 57.2, 32: 55.4, 64: 60.1}, {}

    def run_llama_server(slots, threads, prompts, new_tokens, texts=None):
        sent[slots] = (len(prompts), new_tokens)
        return {"tok_s": rates[slots]}

    monkeypatch.setattr(peer_throughput, "run_llama_server", run_llama_server)
    assert peer_throughput.llama_server_slots(["p"] * 128, 256, 2, (16, 32, 64)) == (64, rates)
    assert sent == {16: (32, 64), 32: (32, 64), 64: (64, 64)}  # a quarter of the length, every slot filled


def test_without_llama_server_there_is_no_slot_trial(monkeypatch):
    monkeypatch.setattr(peer_throughput, "llama_server_binary", lambda: None)
    assert peer_throughput.llama_server_slots(["p"] * 128, 256, 2, (16, 32, 64)) is None


def test_the_best_peer_is_the_fastest_measured_and_a_missing_peer_is_skipped():
    peers = {"llama_server": {"tok_s": 120.0}, "ctranslate2": {"tok_s": 137.4}, "transformers_generate_batch": None}
    assert peer_throughput.best_peer(peers) == {"name": "ctranslate2", "tok_s": 137.4}
    assert peer_throughput.best_peer({**peers, "ctranslate2": None}) == {"name": "llama_server", "tok_s": 120.0}
    assert peer_throughput.best_peer(dict.fromkeys(peers)) is None


def test_sdft_is_compared_with_each_peer_in_its_rounds_and_with_the_best():
    rounds = [{"sdft": {"tok_s": 540.0}, "llama_server": {"tok_s": 120.0}, "ctranslate2": {"tok_s": 135.0}},
              {"sdft": {"tok_s": 546.3}, "llama_server": {"tok_s": 118.0}, "ctranslate2": {"tok_s": 137.4}},
              {"sdft": {"tok_s": 560.0}, "llama_server": {"tok_s": 125.0}, "ctranslate2": {"tok_s": 140.0}}]
    peers = {"llama_server": {"tok_s": 120.0}, "ctranslate2": {"tok_s": 137.4},
             "transformers_generate_batch": {"tok_s": 32.0}}
    ratios = peer_throughput.speedups("sdft", "gen_speedup", rounds, peers)
    assert ratios["gen_speedup_rounds_vs_ctranslate2"] == [4.0, 3.98, 4.0]
    assert ratios["gen_speedup_rounds_vs_llama_server"] == [4.5, 4.63, 4.48]
    # paired peers: the median of the rounds' own ratios; a peer run once: the median rate over its rate
    assert ratios["gen_speedup_vs_peers"] == {"llama_server": 4.5, "ctranslate2": 4.0,
                                              "transformers_generate_batch": round(546.3 / 32.0, 2)}
    assert ratios["gen_speedup_vs_best_peer"] == 4.0  # CTranslate2, the fastest peer, not llama-server


def test_a_peer_not_measured_is_left_out_of_the_ratios():
    rounds = [{"sdft": {"tok_s": 546.3}, "llama_server": {"tok_s": 120.0}}]
    ratios = peer_throughput.speedups("sdft", "gen_speedup", rounds, {"llama_server": {"tok_s": 120.0},
                                                                      "ctranslate2": None})
    assert ratios == {"gen_speedup_vs_peers": {"llama_server": 4.55}, "gen_speedup_rounds_vs_llama_server": [4.55],
                      "gen_speedup_vs_best_peer": 4.55}
    none = peer_throughput.speedups("sdft", "gen_speedup", [{"sdft": {"tok_s": 546.3}}], {"llama_server": None})
    assert none == {"gen_speedup_vs_peers": {}, "gen_speedup_vs_best_peer": None}


def test_ctranslate2_is_tried_at_each_batch_size_of_the_arguments_and_quick_keeps_one():
    assert peer_throughput.parse_args([]).ct2_batch_prompts == [16, 32, 64]
    quick = peer_throughput.parse_args(["--quick", "--ct2-batch-prompts", "32", "64"])
    assert quick.ct2_batch_prompts == [32] and quick.ct2_compute_types == ["int8"]


@pytest.fixture
def fake_trainers(monkeypatch):
    """training_throughput with every trainer's run replaced by a fixed rate (tokens/s by trainer): the calls made."""
    rates = {"sdft": 300.0, "trl_defaults": 160.0, "trl_tuned_fp32": 150.04, "trl_tuned_bf16": 183.0}
    calls = []

    def in_fresh_process(trainer, steps, examples):
        calls.append((trainer, steps))
        return {"tokens_per_s": rates[trainer], "peak_rss_mb": 1}

    monkeypatch.setattr(training_throughput, "in_fresh_process", in_fresh_process)
    return rates, calls


def test_tuned_trl_runs_in_the_faster_dtype_of_a_short_trial(fake_trainers):
    rates, calls = fake_trainers
    assert training_throughput.tuned_dtype(2, 256) == ("bf16", {"fp32": 150.0, "bf16": 183.0})
    assert calls == [("trl_tuned_fp32", 2), ("trl_tuned_bf16", 2)]
    rates["trl_tuned_fp32"] = 190.0
    assert training_throughput.tuned_dtype(2, 256)[0] == "fp32"
    assert training_throughput.trl_tuned_options("fp32")["bf16"] is False
    assert {"trl_tuned_fp32", "trl_tuned_bf16"} <= set(training_throughput.TRAINERS)


def test_training_rounds_run_tuned_trl_in_the_dtype_its_trial_chose_and_record_the_trial(fake_trainers, monkeypatch):
    rates, calls = fake_trainers
    rates["trl_tuned_fp32"] = 200.0
    monkeypatch.setattr(training_throughput, "bound_model", lambda: None)
    monkeypatch.setattr(training_throughput, "peak_sample", lambda model: 1.0)
    monkeypatch.setattr(training_throughput, "_rows", lambda n: [])
    monkeypatch.setattr(training_throughput, "_examples", lambda rows: [])
    monkeypatch.setattr(training_throughput, "compute_bound", lambda examples, model, samples: {"tokens_per_s": 1000.0})
    monkeypatch.setattr(training_throughput, "machine_info", lambda: {})
    args = argparse.Namespace(steps=6, rounds=2, examples=256, trl_defaults_steps=1, dtype_trial_steps=2)
    results = training_throughput.run(args)
    assert calls[3:] == [("sdft", 6), ("trl_tuned_fp32", 6)] * 2  # after TRL's defaults and the two trials
    tuned = results["train_trl_tuned"]
    assert tuned["dtype"] == "fp32" and tuned["options"]["bf16"] is False
    assert tuned["dtype_trial_tokens_per_s"] == {"fp32": 200.0, "bf16": 183.0}
    assert results["train_speedup_vs_trl_tuned"] == 1.5
