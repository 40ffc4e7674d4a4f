"""Paper-faithful mode against the reference code (sail-sg/sdft branch `reproduce`; bigcode-evaluation-harness e54f33d):
exact raw prompt strings, the reference's selection rules on rewrites from its own distilled OpenFunctions file, and the
octocoder HumanEval prompt and post-processing."""

import json
from pathlib import Path

import pytest
import yaml

from sdft.data.templates import render
from sdft.evaluation.benchmarks import get_benchmark, humanevalpack_instruction, octocoder_completion, octocoder_program
from sdft.evaluation.checks import SELECTION_RULES, paper_call_score, paper_last_integer, paper_math_check


class LlamaLikeTokenizer:
    """What the raw renderer reads from a Llama-2 tokenizer: its BOS/EOS text and whether it adds BOS."""

    bos_token, eos_token, bos_token_id, add_bos_token, chat_template = "<s>", "</s>", 1, True, None


TOK = LlamaLikeTokenizer()
QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"
ANSWER = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\nThe answer is 72."
GSM8K_ROW = {"instruction": QUESTION + "\n", "response": "\n" + ANSWER}  # the reference strips query and answer

# Strings as LLaMA-Factory (reproduce branch) renders its gsm8k / gsm8k_infer / gsm8k_distill templates: BOS, the <<SYS>>
# block, then [INST] ... [/INST]; the distill prompt ends with the pre-filled "Great! Let's think step by step. ".
GSM8K_TRAIN = ("<s><<SYS>>\nYou are an expert in math. Below is a math question. Write a response that appropriately "
               f"answers the question.\n<</SYS>>\n\n[INST] {QUESTION} [/INST]")
GSM8K_INFER = ("<s><<SYS>>\nYou are an expert in math. Below is a math question. Write a response that appropriately "
               "answers the question. Your final answer should be an integer at the end of your response, formatted as: "
               f"The answer is {{answer}}.\n<</SYS>>\n\n[INST] {QUESTION} [/INST]")
GSM8K_DISTILL = ("<s><<SYS>>\nYou are an expert in math. Below are a math question and its reference answer. Refer to the "
                 "reference answer and write a response that appropriately answers the question.\n<</SYS>>\n\n"
                 f"[INST] {QUESTION}\n\n{ANSWER} [/INST] Great! Let's think step by step. ")


@pytest.mark.parametrize("template, expected", [("gsm8k", GSM8K_TRAIN), ("gsm8k_infer", GSM8K_INFER),
                                                ("gsm8k_distill", GSM8K_DISTILL)])
def test_raw_gsm8k_equals_reference_rendering(template, expected):
    assert render(template, GSM8K_ROW, TOK, "raw") == expected


ALPACA_SYSTEM = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
DISTILL_PREFIX = "Below are an instruction that describes a task along with a reference answer. "


@pytest.mark.parametrize("template, expected", [
    ("alpaca", f"<s>{ALPACA_SYSTEM}\n\n### Instruction:\nGive a synonym.\nhappy\n\n### Response:\n"),
    ("distill_using", f"<s>{DISTILL_PREFIX}Using the reference answer as a guide, write your own response.\n\n"
                      "### Instruction:\nGive a synonym.\nhappy\n\n### Reference Answer:\nJoyful.\n\n### Response:\n"),
    ("distill_refer", f"<s>{DISTILL_PREFIX}Refer to the reference answer and write your own response.\n\n"
                      "### Instruction:\nGive a synonym.\nhappy\n\n### Reference Answer:\nJoyful.\n\n### Response:\n"),
])
def test_raw_alpaca_templates_equal_reference_rendering(template, expected):
    # instruction + "\n" + input, as LLaMA-Factory's construct_example joins them
    assert render(template, {"instruction": "Give a synonym.\nhappy", "response": "Joyful. "}, TOK, "raw") == expected


def test_raw_multi_turn_row_matches_llamafactory_turn_layout():
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    text = render("distill_using", {"instruction": "Tell a joke.", "response": "Why...", "history": history}, TOK, "raw")
    turn = "### Instruction:\n{q}\n\n### Reference Answer:\n{r}\n\n### Response:\n"
    system = DISTILL_PREFIX + "Using the reference answer as a guide, write your own response."
    # turn 0: BOS + system + sep + prompt, answer + EOS; turn 1: sep + BOS + prompt
    assert text == (f"<s>{system}\n\n" + turn.format(q="Hi", r="Hello!") + "Hello!</s>\n\n<s>"
                    + turn.format(q="Tell a joke.", r="Why..."))


# --- OpenFunctions selection: rewrites the reference kept (sail-sg/sdft main, data/openfunction/distilled_openfunction.json)

KEPT_BY_REFERENCE = [
    # a call followed by an explanation (paper Fig. 17's pattern)
    ('gcloud.alpha.ai_platform.jobs.describe(JOB="my-job", summarize=True)',
     'gcloud.alpha.ai_platform.jobs.describe(JOB="my-job", summarize=True)\n\nPlease let me know if you have any questions '
     'or if there is anything else I can help you with. Thank you for using the AI Platform!'),
    ("pyarrow.BitwiseOr(x=arr1,y=arr2)",
     "I would construct the function call as follows:\n\npyarrow.BitwiseOr(x=arr1,y=arr2)\n\nThis function call performs a "
     "bit-wise OR operation on the elements of the two input arrays, arr1 and arr2, and returns the result."),
    # the reference call written with ", " inside a sentence, next to a second call
    ('pyarrow.create_ipc_file_writer(sink="file1.ipc",schema=schema1)',
     'I will create two Arrow columnar IPC file writer instances. Here are the function calls:\n1. For writing to '
     '"file1.ipc" with schema schema1:\npyarrow.create_ipc_file_writer(sink="file1.ipc", schema=schema1)\n\n2. For '
     'writing to "file2.ipc" with schema schema2:\npyarrow.create_ipc_file_writer(sink="file2.ipc", schema=schema2)'),
    # single quotes in a fenced block with two calls
    ("pyarrow.UnknownExtensionType(storage_type='int',serialized='abcdefg')",
     "```\npyarrow.UnknownExtensionType(storage_type='int',serialized='abcdefg')\npyarrow.UnknownExtensionType("
     "storage_type='float',serialized='123456')\n```\n\nThe function call is used to create three instances."),
]


@pytest.mark.parametrize("reference, rewrite", KEPT_BY_REFERENCE)
def test_paper_and_ast_contains_keep_what_the_reference_kept(reference, rewrite):
    rules = SELECTION_RULES["function_call"]
    example = {"reference": reference}
    assert rules["paper"](rewrite, example).ok
    assert rules["ast_contains"](rewrite, example).ok
    assert rules["ast_exact"](rewrite, example).reason == "unparseable_call"  # today's rule rejects them all


def test_paper_call_score_word_boundary_and_half_credit():
    ref = 'weather.get(city="Paris", days=3)'
    assert paper_call_score('Use weather.get(city="Paris",days=3).', ref) == 1.0
    assert paper_call_score('api.weather.get(city="Paris", days=3)', ref) == 1.0  # "." before the name is a boundary
    assert paper_call_score('my_weather.get(city="Paris", days=3)', ref) == 0.5  # "_" is not; the values still match
    assert paper_call_score('weather.get("Paris", 3)', ref) == 0.5  # positional arguments: the sdft#12 half credit
    assert paper_call_score('weather.get(days=3, city="Paris")', ref) == 0.0  # reordered keywords get nothing
    assert paper_call_score('weather.get(city="Rome", days=3)', ref) == 0.0


def test_paper_call_rules_disagree_where_expected():
    rules, ref = SELECTION_RULES["function_call"], {"reference": 'f(a=1, b="x")'}
    assert not rules["paper"]("f(b='x', a=1)", ref).ok and rules["ast_contains"]("f(b='x', a=1)", ref).ok
    assert rules["paper"]("Call f(1, 'x') now", ref).ok  # half credit is truthy in gen_distilled_data.py
    assert not rules["ast_contains"]("Call f(1, 'x') now", ref).ok
    assert not rules["paper"]("Your turn: f(a=1, b='x')", ref).ok  # the reference's case-sensitive opening ban


def test_paper_math_rule_keeps_the_reference_quirks():
    assert paper_last_integer("She has 3 4 apples") == 34  # digits split by whitespace join
    assert paper_last_integer("16-3") == -3
    assert paper_last_integer("It is 2.50") is None and paper_last_integer("5.00 dollars") == 5
    assert paper_math_check("so 72.", ANSWER).ok
    assert not paper_math_check("The answer is 72. Check: 48 + 24", ANSWER).ok  # the last number wins, not "answer is"


# --- HumanEval, octocoder prompt -------------------------------------------------------------------------------------


def test_humanevalpack_instruction_of_humaneval_0(shared_data):
    problem = json.loads((Path(shared_data) / "humaneval/HumanEval.jsonl").read_text().splitlines()[0])
    # humanevalpack's own instruction for HumanEval/0 (bigcode/humanevalpack, python, test split)
    assert humanevalpack_instruction(problem) == (
        "Write a Python function `has_close_elements(numbers: List[float], threshold: float) -> bool` to solve the "
        "following problem:\nCheck if in given list of numbers, are any two numbers closer to each other than\n"
        "given threshold.\n>>> has_close_elements([1.0, 2.0, 3.0], 0.5)\nFalse\n"
        ">>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\nTrue")
    sample = get_benchmark("humaneval_octocoder").load(shared_data)[0]
    prompt = render("octocoder", sample.fields, TOK, "chat")  # same text in both modes
    assert prompt == "<s>Question: " + humanevalpack_instruction(problem) + "\n\nAnswer:\n" + problem["prompt"].strip()


def test_octocoder_completion_cuts_like_the_harness():
    generation = "\n    return sorted(x)\n\n\ndef helper():\n    pass\n"
    assert octocoder_completion(generation) == "\n    return sorted(x)\n\n"
    assert octocoder_completion("\n    y = 1\n    return y\nprint(f())") == "\n    y = 1\n    return y"
    assert octocoder_completion("\n    return 1  # done\n```\nExplanation") == "\n    return 1  # done"


def test_octocoder_program_passes_with_canonical_body(shared_data):
    bench = get_benchmark("humaneval_octocoder")
    sample = bench.load(shared_data)[2]  # truncate_number
    # the prompt ends at the docstring's closing quotes (the harness strips it), so a completion opens with a newline
    assert bench.score(sample, "\n" + sample.reference + "\n\nif __name__ == '__main__':\n    pass") == 1.0
    assert bench.score(sample, "\n    return 0.0\n") == 0.0
    assert octocoder_program(sample.extra["problem"], "\n    return 1").startswith("import math\nimport re\n")


# --- presets -----------------------------------------------------------------------------------------------------------

PRESETS = sorted((Path(__file__).parents[1] / "sdft/presets").glob("paper-*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_paper_preset_dry_runs_and_its_data_is_local(preset, shared_data, tmp_path, monkeypatch, capsys):
    from sdft.cli import main
    from sdft.data.datasets import DATASETS, load_dataset

    monkeypatch.setenv("SDFT_DATA_DIR", str(shared_data))
    assert main(["run", str(preset), "--dry-run", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    config = yaml.safe_load(preset.read_text())
    for name in config["eval"]["benchmarks"]:
        assert (shared_data / get_benchmark(name).data_file).is_file(), name
    for name in config["datasets"]:
        if not (shared_data / DATASETS[name].local_file).is_file():
            pytest.skip(f"{name}: not in the shared data (hub only)")
        assert load_dataset(name, str(shared_data), limit=5).source.startswith(str(shared_data))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_paper_preset_samples_selects_and_trains_as_the_reference(preset):
    """LLaMA-Factory's generating defaults (T 0.95, top_p 0.7, top_k 50) for distillation and the benchmarks its scripts
    sampled; HumanEval greedy (bigcode harness --do_sample False); LoRA dropout 0.1 and the split cutoff; `paper` rule."""
    from sdft.experiment import load_experiment

    experiment = load_experiment(str(preset))
    reference = (0.95, 0.7, 50)
    assert (experiment.distill.temperature, experiment.distill.top_p, experiment.distill.top_k) == reference
    assert experiment.distill.selection == "paper"
    assert (experiment.train.lora_dropout, experiment.train.truncation) == (0.1, "split")
    for name in experiment.eval.benchmarks:
        bench = get_benchmark(name)
        if bench.kind == "knowledge":
            continue
        decoding = experiment.eval.benchmark_decoding(bench)
        sampled = (decoding.temperature, decoding.top_p, decoding.top_k) == reference
        assert sampled == (name != "humaneval_octocoder"), name
        assert set(bench.stop) <= set(decoding.stop)


def test_selection_the_dataset_task_lacks_fails_on_load(tmp_path):
    from sdft.core.errors import UserError
    from sdft.experiment import load_experiment

    path = tmp_path / "x.yaml"
    path.write_text("datasets: [openfunctions, gsm8k]\ndistill:\n  selection: ast_contains\n")
    with pytest.raises(UserError, match="distill.selection: task 'math' has no rule 'ast_contains'"):
        load_experiment(str(path))


def test_distill_reports_acceptance_under_every_rule():
    from sdft.stages.distill import distill_stats, select

    example = {"instruction": "q", "response": 'f(a=1, b="x")'}
    rewrites = [('f(a=1, b="x")', "stop"), ("Here: f(b='x', a=1). It sets a.", "stop"), ('f(a=1,b="x") and then', "length")]
    rows = []
    for text, finish in rewrites:
        verdicts = {rule: select(text, finish, example, "function_call", rule) for rule in SELECTION_RULES["function_call"]}
        accepted = verdicts["ast_exact"][0]
        rows.append({"accepted": accepted, "reason": verdicts["ast_exact"][1], "original": example["response"],
                     "target": text if accepted else example["response"],
                     "accepted_by": {rule: ok for rule, (ok, _) in verdicts.items()}})
    stats = distill_stats(rows, "openfunctions", "function_call", "distill_refer", "ast_exact")
    # paper keeps the truncated one (no length check in the reference) but not the reordered keywords
    assert {rule: v["accepted"] for rule, v in stats["by_rule"].items()} == {"ast_exact": 1, "ast_contains": 2, "paper": 2}
    assert stats["accepted"] == 1 and stats["selection"] == "ast_exact" and stats["reasons"]["truncated"] == 1
    assert stats["changed"] == 0  # the one rewrite kept repeats the original: the training set is vanilla's


def test_char_bleu_is_the_reference_character_level_bleu():
    from sdft.analysis.shift import char_bleu

    assert char_bleu("same text", "same text") == pytest.approx(1.0)
    # characters a,b,c,d vs a,b,c,e: n-gram precisions 3/4, 2/3, 1/2 and 0/1, which method 3 smooths to 1/2 (1 / 2^1)
    assert char_bleu("abcd", "abce") == pytest.approx((3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25)


def test_distill_selects_with_the_configured_rule(tmp_path, monkeypatch, embedded_tokenizer, capsys):
    """`selection` picks the rule the targets come from (default: sdft's, the task's first, here the one OpenFunctions
    is scored by), and says how many targets it changed; a rule the task lacks is refused before anything loads."""
    from types import SimpleNamespace

    from sdft.core.errors import UserError
    from sdft.options import DistillConfig
    from sdft.stages import distill as stage

    data = tmp_path / "calls.jsonl"
    data.write_text(json.dumps({"instruction": "Call f.", "output": 'f(a=1, b="x")'}) + "\n")
    rewrite = 'Here it is: f(a=1, b="x")\nIt sets a to 1.'  # Fig. 17's shape: the call, then an explanation
    monkeypatch.setattr(stage, "make_engine", lambda *a, **k: SimpleNamespace(tokenizer=embedded_tokenizer))
    monkeypatch.setattr(stage, "generate_rows", lambda engine, items, *a, **k: [
        {"id": i, "prediction": rewrite, "finish_reason": "stop"} for i, _ in items])
    for rule, accepted in [(None, 1), ("ast_exact", 0), ("paper", 1)]:
        stats = stage.distill(DistillConfig(dataset=str(data), out=str(tmp_path / str(rule)), task="function_call",
                                            selection=rule))
        assert (stats["selection"], stats["accepted"]) == (rule or "ast_contains", accepted)
        assert {name: v["accepted"] for name, v in stats["by_rule"].items()} == {"ast_exact": 0, "ast_contains": 1, "paper": 1}
        assert (f"{accepted} of 1 rewrites kept ({rule or 'ast_contains'}); targets that differ from the original: "
                f"{accepted} (where") in capsys.readouterr().err
    with pytest.raises(UserError, match="task 'math' has no rule 'ast_contains'"):
        DistillConfig(dataset=str(data), out=str(tmp_path), task="math", selection="ast_contains")
    with pytest.raises(UserError, match="unknown value 'exact'"):
        DistillConfig(dataset=str(data), out=str(tmp_path), selection="exact")


def test_paper_presets_sweep_what_the_paper_swept():
    """Mix ratio and train size (Figs 5–8) on GSM8K and Alpaca, the distillation template (Table 4) on OpenFunctions
    and Alpaca, and sdft#15's matched capacity on GSM8K, whose rerun numbers the replication table shows."""
    from sdft.analysis.paper_numbers import references
    from sdft.experiment import load_experiment
    from sdft.pipeline import plan

    for name in ("paper-gsm8k", "paper-alpaca"):
        experiment = load_experiment(name)
        assert len(experiment.mix_ratios) >= 3 and len(experiment.train_sizes) >= 2, name
        assert experiment.train_size and experiment.train_size > max(experiment.train_sizes), name
    assert load_experiment("paper-openfunctions").distill_templates == ["distill_using"]
    assert load_experiment("paper-alpaca").distill_templates == ["distill_refer"]
    arms = {(m.dataset, m.method, m.capacity) for m in plan(load_experiment("paper-gsm8k")).models}
    assert {("gsm8k", "vanilla", "all-linear-r64"), ("gsm8k", "sdft", "all-linear-r64")} <= arms
    assert all(references(*arm) for arm in arms if arm[1] in ("seed", "vanilla", "sdft"))
