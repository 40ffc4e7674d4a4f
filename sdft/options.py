"""Every command option, declared once in an option group and composed per command, the way TRL composes
`ModelConfig` + `ScriptArguments` (a field's help doubles as its CLI help). Light on purpose: building the CLI, or
loading an experiment, imports no torch.

Groups: model, decoding and engine (`ModelOptions`, `DecodingOptions`, `EngineOptions`, `SeedOption`: in
`sdft.engines.options`, which the engines read), prompt (`PromptModeOption`, `PromptOptions`), data (`DataDirOption`,
`DataOptions`; `TrainingDataOptions` for the dataset distilled or trained on), judge (`JudgeOptions`), on-policy
distillation (`OnPolicyOptions`), the exported training set (`ExportOptions`), the user's own benchmarks
(`UserTasksOption`).
`XOptions` is what an experiment's `x:` section may set; `XConfig` adds the command's own inputs and outputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sdft.core.config import Options, at_least, each, field, within
from sdft.core.errors import UserError
from sdft.data.export import FORMATS
from sdft.data.sources import NAMES as DATA_NAMES
from sdft.data.templates import PROMPT_MODES
from sdft.engines.options import AdaptedModelOptions, DecodingOptions, EngineOptions, ModelOptions, SeedOption
from sdft.evaluation.benchmarks import BENCHMARKS, Benchmark
from sdft.evaluation.checks import CHECKS, SELECTION_RULES
from sdft.evaluation.user_benchmarks import CHECK_KINDS, declare_tasks

SELECTION_RULES_NAMES = tuple(dict.fromkeys(name for rules in SELECTION_RULES.values() for name in rules))
TRUNCATIONS = ("prompt_start", "total", "split")
# Everything that needs neither a judge nor the optional lm-eval; add alpaca_eval and the knowledge tasks by name.
DEFAULT_BENCHMARKS = [name for name, bench in BENCHMARKS.items() if bench.kind == "generate" and bench.in_default_suite]


def check_selection(task: str, selection: str, key: str = "selection") -> None:
    """A rule the task has: `ast_*` exist for function calls only."""
    if selection not in SELECTION_RULES[task]:
        raise UserError(f"{key}: task '{task}' has no rule '{selection}' (known: {' | '.join(SELECTION_RULES[task])})")


@dataclass(kw_only=True)
class PromptModeOption(Options):
    prompt_mode: str = field("chat", choices=PROMPT_MODES, help="chat (the model's chat template) or raw (the reference code's text)")


@dataclass(kw_only=True)
class PromptOptions(PromptModeOption):
    template: str | dict | None = field(None, help="prompt template name, or {system, user, assistant_prefix} "
                                                   "(default: the dataset's; alpaca for generate)")
    columns: dict = field({}, help="column mapping, e.g. {instruction: question, response: answer}")


@dataclass(kw_only=True)
class DataDirOption(Options):
    data_dir: str | None = field(None, help="local data directory (default: $SDFT_DATA_DIR or ../shared/data)")


@dataclass(kw_only=True)
class DataOptions(DataDirOption, SeedOption):
    limit: int | None = field(None, check=at_least(1), help="seeded subset of at most N rows (per benchmark in eval)")


@dataclass(kw_only=True)
class TrainingDataOptions(DataOptions):
    """Which rows of the training dataset `sdft distill` and `sdft train` read (eval reads its benchmarks' files)."""

    split: str | None = field(None, omit_default=True, help="split of a hub dataset id (default: train; a registry "
                                                            "dataset reads its own)")
    subset: str | None = field(None, omit_default=True, help="config (subset) of a hub dataset id, e.g. main for "
                                                             "openai/gsm8k (a registry dataset reads its own)")
    paper_subsample: bool = field(False, omit_default=True,
                                  help="the paper's App. A rule: a dataset over 10,000 rows is cut to a seeded random "
                                       "2,000 (the paper presets ask for it)")


@dataclass(kw_only=True)
class JudgeOptions(Options):
    """The pairwise judge for judged benchmarks (alpaca_eval), shared by `sdft eval` and `sdft score`."""

    judge_url: str | None = field(None, help="OpenAI-compatible judge endpoint, e.g. http://127.0.0.1:8000/v1")
    judge_model: str | None = field(None, help="judge model name at --judge-url, or hf:PATH for a local HF judge")
    judge_api_key_env: str = field("OPENAI_API_KEY", help="environment variable holding the judge's API key")

    def judge(self):
        from sdft.evaluation.judge import make_judge

        return make_judge(judge_url=self.judge_url, judge_model=self.judge_model, api_key_env=self.judge_api_key_env)


@dataclass(kw_only=True)
class DistillOptions(ModelOptions, PromptOptions, TrainingDataOptions, DecodingOptions, EngineOptions):
    task: str | None = field(None, choices=CHECKS, help="selection check (default: the dataset's, else generic)")
    selection: str | None = field(None, choices=SELECTION_RULES_NAMES,
                                  help="selection rule of the task (default: sdft's, the task's first; paper: the "
                                       "reference's, e.g. OpenFunctions' call anywhere in the rewrite)")

    def __post_init__(self):
        super().__post_init__()
        if self.task and self.selection:
            check_selection(self.task, self.selection)


@dataclass(kw_only=True)
class ExportOptions(Options):
    """The distilled rows as a training set for a trainer of the user's own (`sdft.data.export`)."""

    format: str | None = field(None, choices=FORMATS,
                               help="write the distilled rows as a training set, train.<format>.jsonl: messages "
                                    "(OpenAI/TRL chat), prompt-completion (TRL, conversational), alpaca or sharegpt "
                                    "(LLaMA-Factory); an entry for LLaMA-Factory goes in dataset_info.json beside it")
    push_to_hub: str | None = field(None, help="also upload the training set to this Hugging Face dataset repo "
                                               "(needs --format and a hub login)")

    def __post_init__(self):
        super().__post_init__()
        if self.push_to_hub and not self.format:
            raise UserError("push_to_hub: needs --format (the layout to upload)")


@dataclass(kw_only=True)
class DistillConfig(ExportOptions, DistillOptions):
    dataset: str = field(help="registry name (gsm8k, openfunctions, alpaca, dolly, lima, magicoder, multiarith), a file, or a hub id")
    out: str = field(help="output directory")


@dataclass(kw_only=True)
class ExportConfig(ExportOptions):
    distilled: str = field(help="distilled.jsonl, or the folder holding it: a `sdft distill` output, or a run "
                                "directory with one distillation")
    out: str | None = field(None, help="the training set's file (default: train.<format>.jsonl beside distilled.jsonl)")

    def __post_init__(self):
        super().__post_init__()
        if self.format is None:
            raise UserError(f"missing required option: --format ({' | '.join(FORMATS)})")


@dataclass(kw_only=True)
class TrainOptions(ModelOptions, PromptOptions, TrainingDataOptions):
    epochs: float | None = field(None, check=at_least(0), help="default: the dataset's (paper: 5 for GSM8K/OpenFunctions, 2 otherwise)")
    max_steps: int = field(-1, help="stop after N optimizer steps (-1 = use epochs)")
    learning_rate: float = field(1e-4, check=at_least(0), help="peak learning rate, cosine to 0, no warmup")
    batch_size: int = field(8, check=at_least(1), help="effective training batch (gradient accumulation makes it up)")
    micro_batch_size: int = field(8, check=at_least(1), help="per-device batch")
    max_length: int = field(1024, check=at_least(1), help="token cutoff per example")
    truncation: str = field("prompt_start", choices=TRUNCATIONS,
                            help="how max_length cuts a long example: prompt_start (the target kept, the prompt's start "
                                 "cut, its BOS kept), total (prompt + target cut at the end: a long prompt leaves no "
                                 "target, and the row is dropped) or split (LLaMA-Factory's, as the reference trained: "
                                 "prompt and target each cut to a share of max_length in proportion to their lengths); "
                                 "on-policy prompts always lose their start")
    finetune: str = field("lora", choices=("lora", "full"), help="LoRA adapter or full fine-tuning")
    lora_r: int = field(8, check=at_least(1), help="LoRA rank")
    lora_alpha: int = field(16, help="LoRA alpha")
    lora_dropout: float = field(0.0, check=within(0, 1), help="LoRA dropout (the reference: 0.1)")
    target_modules: list[str] = field(["q_proj", "v_proj"], help="LoRA target modules, or all-linear")
    merge: bool = field(False, help="also save the merged model under OUT/merged")
    bf16: bool | None = field(None, help="bf16 mixed precision (default: where the hardware is fast at it)")
    save_steps: int = field(100, check=at_least(1), help="checkpoint every N steps (resume after a kill)")
    eval_at_steps: list[int] = field([], check=each(at_least(1)), omit_default=True,
                                     help="also save the trained weights after these optimizer steps (OUT/steps/step-N): "
                                          "the points of a learning curve, each evaluated by `sdft run`")
    logging_steps: int = field(5, check=at_least(1), help="TensorBoard logging interval")


@dataclass(kw_only=True)
class OnPolicyOptions(Options):
    """On-policy self-distillation (Shenfeld et al. 2026) through TRL's `SDFTTrainer`: the student samples answers to
    the training prompt and is pulled, token by token, towards the seed shown the demonstration in the distillation
    template. An experiment's `onpolicy:` section; only `--method onpolicy` reads it."""

    teacher: str = field("base", choices=("base", "live", "ema"),
                         help="the teacher: base (the seed, as SDFT's rewriter), live (the current student) or ema "
                              "(an exponential average of the student)")
    distillation_mode: str = field("topk_logits", choices=("topk_logits", "full_logits", "sampled_token"),
                                   help="TRL's objective: divergence over the teacher's top-k logits, the full "
                                        "vocabulary, or reverse KL on the sampled token")
    distillation_topk: int = field(100, check=at_least(1), help="k of topk_logits")
    num_generations: int = field(1, check=at_least(1),
                                 help="answers sampled per prompt; batch_size must be a multiple (1: an epoch visits "
                                      "each row once, as vanilla and SDFT do)")
    max_completion_length: int = field(256, check=at_least(1), help="length cap of a sampled answer in tokens")
    teacher_template: str | dict | None = field(None, help="the teacher's prompt template (default: the dataset's "
                                                           "distillation template, as `sdft distill` renders it)")


@dataclass(kw_only=True)
class TrainConfig(TrainOptions, OnPolicyOptions):
    method: str = field("sft", choices=("sft", "onpolicy"),
                        help="sft: supervised on the targets (vanilla, SDFT or a mix, by --mix-ratio); onpolicy: "
                             "on-policy self-distillation with TRL's SDFTTrainer (the targets are the teacher's "
                             "demonstrations)")
    data: str = field(help="distilled.jsonl from `sdft distill`, or any dataset (registry name, file, hub id) for vanilla")
    out: str = field(help="output directory (adapter, logs, checkpoints)")
    mix_ratio: float | None = field(None, check=within(0, 1),
                                    help="fraction of rows trained on distilled targets (1 = SDFT, 0 = vanilla; default 1 for distilled "
                                         "data, 0 with --method onpolicy: its teacher is shown the originals)")

    def __post_init__(self):
        super().__post_init__()
        if self.method == "onpolicy" and self.batch_size % self.num_generations:
            raise UserError(f"num_generations: {self.num_generations} does not divide batch_size {self.batch_size} "
                            "(each step trains whole groups of answers to one prompt)")


@dataclass(kw_only=True)
class GenerateConfig(AdaptedModelOptions, PromptOptions, DecodingOptions, EngineOptions):
    input: str = field(help="JSONL/JSON/CSV/Parquet rows with an instruction (or prompt) column and optional id")
    out: str = field(help="output JSONL: id, prediction, finish_reason, n_tokens per input row")


@dataclass(kw_only=True)
class UserTasksOption(Options):
    """Benchmarks of the user's own held-out files (`sdft.evaluation.user_benchmarks`), valid wherever a benchmark's
    name is; declared (their files read) when the config is built, so a bad one fails before any model loads."""

    tasks: dict = field({}, omit_default=True,
                        help="your own benchmarks, named like built-in ones: NAME: FILE:CHECK, or NAME: {file, check, "
                             "columns, template, max_new_tokens, pattern}; FILE: JSONL/JSON/CSV/Parquet rows with a "
                             f"prompt and a reference column; CHECK: {' | '.join(CHECK_KINDS)}")

    def __post_init__(self):
        super().__post_init__()
        declare_tasks(self.tasks)

    def declared_tasks(self) -> dict[str, Benchmark]:
        return declare_tasks(self.tasks)

    def check_benchmark_names(self, key: str, names: list[str]) -> None:
        """Each name a built-in benchmark or a declared task: a typo is one error naming `key`."""
        known = [*BENCHMARKS, *self.tasks]
        unknown = next((name for name in names if name not in known), None)
        if unknown is not None:
            raise UserError(f"{key}: unknown value '{unknown}' (known: {' | '.join(known)})")


BENCHMARK_NAMES_HELP = f"{' | '.join(BENCHMARKS)}, or a task declared in tasks"


@dataclass(kw_only=True)
class EvalOptions(ModelOptions, PromptModeOption, DataOptions, DecodingOptions, EngineOptions, JudgeOptions,
                  UserTasksOption):
    benchmarks: list[str] = field(DEFAULT_BENCHMARKS, help=f"benchmarks to run ({BENCHMARK_NAMES_HELP})")
    lm_eval_batch_size: int = field(32, check=at_least(1), help="lm-eval's batch for the knowledge tasks")
    sampled: list[str] | None = field(None, help="benchmarks decoded with temperature/top_p/top_k (default: all); the "
                                                 "others greedily, as the reference ran HumanEval while sampling the "
                                                 "rest")

    limits: dict = field({}, omit_default=True,
                         help="a benchmark's own subset size over limit: NAME: N (a seeded N of its rows) or NAME: all, "
                              "e.g. {ifeval: all}")

    def __post_init__(self):
        super().__post_init__()
        self.check_benchmark_names("benchmarks", self.benchmarks)
        self.check_benchmark_names("sampled", self.sampled or [])
        self.check_benchmark_names("limits", list(self.limits))
        for name, value in self.limits.items():
            if value != "all" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UserError(f"limits.{name}: expected a row count ≥ 1 or all, got {value!r}")

    def limit_for(self, benchmark: str) -> int | None:
        """How many of a benchmark's rows are scored (a seeded subset; None: all): its `limits` entry, else `limit`."""
        value = self.limits.get(benchmark, self.limit)
        return None if value == "all" else value

    def benchmark_decoding(self, bench) -> DecodingOptions:
        """The decoding of one benchmark: its length cap (unless max_new_tokens is set), its stop strings added to
        ours, greedy unless it is sampled. Sampling is seeded per (seed, prompt), so a rerun or resume reproduces it."""
        decoding = self.decoding(cap=bench.max_new_tokens)
        greedy = {} if self.sampled is None or bench.name in self.sampled else {"temperature": 0.0}
        return dataclasses.replace(decoding, stop=list(dict.fromkeys([*decoding.stop, *bench.stop])), **greedy)


@dataclass(kw_only=True)
class EvalConfig(AdaptedModelOptions, EvalOptions):
    out: str = field(help="output directory: results.json, <benchmark>.jsonl, <benchmark>.generations.jsonl")


@dataclass(kw_only=True)
class ScoreConfig(DataDirOption, JudgeOptions, UserTasksOption):
    benchmark: str = field(help=f"benchmark whose data the predictions answer ({BENCHMARK_NAMES_HELP})")
    predictions: str = field(help="JSONL with `id` and `prediction` per row, e.g. <benchmark>.generations.jsonl")

    def __post_init__(self):
        super().__post_init__()
        self.check_benchmark_names("benchmark", [self.benchmark])


@dataclass(kw_only=True)
class DataConfig(DataDirOption):
    action: str = field("list", choices=("list", "download"),
                        help="list: each data file, where it comes from and whether it is here; download: fetch, "
                             "convert and checksum files into the cache the evaluation falls back to")
    names: list[str] = field([], check=each(lambda name: None if name in DATA_NAMES else
                                            f"unknown data file or folder '{name}' (see `sdft data list`)"),
                             help="data files (e.g. gsm8k/sdft_gsm8k_test.jsonl) or folders (e.g. gsm8k); default: all")
    to: str | None = field(None, help="download into this directory instead of the cache "
                                      "($SDFT_CACHE_DIR or ~/.cache/sdft, then data/)")
    mirror: str | None = field(None, help="base URL standing in for https://raw.githubusercontent.com, laid out "
                                          "OWNER/REPO/COMMIT/PATH (default: $SDFT_DATA_MIRROR)")
