"""An experiment's options (`ExperimentConfig`) and the `run` / `report` / `demo` commands' configs; light (no torch),
so `sdft run X.yaml --dry-run` checks a whole file, at every depth, before anything loads.

Options shared by every stage (model, dtype, prompt mode, seed, data directory) are set once at the top level and
inherited by the typed `distill` / `train` / `eval` sections; a section may not set them, nor the training-set size
the experiment sets per stage (the mix ratio and the adapter under evaluation are not section options at all).

A top-level `tasks:` section declares the user's own benchmarks (`evaluation.user_benchmarks`); it becomes the eval
section's `tasks`, so their names are valid in `eval.benchmarks`, `target_benchmark` and `decision.measures`, and every
eval stage carries them in its config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from sdft.core.config import Options, at_least, build_config, each, field, load_yaml, within
from sdft.core.errors import UserError
from sdft.data.datasets import DATASETS
from sdft.data.templates import TEMPLATES
from sdft.evaluation.user_benchmarks import declare_tasks
from sdft.options import (
    DataDirOption,
    DistillOptions,
    EvalOptions,
    ModelOptions,
    OnPolicyOptions,
    PromptModeOption,
    SeedOption,
    TrainOptions,
    check_selection,
)

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
INHERITED = ("model", "dtype", "prompt_mode", "seed", "data_dir")
SECTIONS = ("distill", "train", "eval")
OWNED = {"distill": ("limit",), "train": ("limit",)}  # the training-set size, set per stage from train_size(s)


@dataclass(kw_only=True)
class ShiftOptions(Options):
    benchmark: str | None = field("advbench", help="the eval benchmark whose outputs are compared with the seed's (null: none)")


@dataclass(kw_only=True)
class RetentionOptions(Options):
    prompts: int | None = field(None, check=at_least(1),
                                help="how many general prompts (AlpacaEval's) the seed answers and every model scores (null: no retention analysis)")
    max_new_tokens: int = field(128, check=at_least(1), help="length cap of the seed's answers")
    temperature: float = field(0.0, check=at_least(0), omit_default=True,
                               help="the seed's sampling temperature: 0 answers greedily (the text SDFT's greedy "
                                    "rewrites resemble); 1 samples the seed's own distribution, so a model's drop from "
                                    "the seed's score estimates KL(seed || model) per token")


@dataclass(kw_only=True)
class ReferenceLikelihoodOptions(Options):
    prompts: int | None = field(None, check=at_least(1),
                                help="how many of AlpacaEval's reference answers (text-davinci-003's: no model here "
                                     "wrote them) every model scores (null: none)")
    max_tokens: int = field(128, check=at_least(1), help="tokens of each reference scored (its first)")


@dataclass(kw_only=True)
class DecisionOptions(Options):
    """The rule that decides SDFT against vanilla at matched task gain, stated before the run (`analysis.frontier`)."""

    gains: list[float] = field([], help="target-task gains over the seed (target metric's points) at which forgetting is "
                                        "compared; the first decides the verdict (empty: no decision)")
    measures: list[str] = field([], help="forgetting measures the verdict reads: benchmark names or "
                                         "reference_likelihood (measures not favoured by construction)")
    min_seeds: int = field(2, check=at_least(1), help="seeds in which SDFT must reach the gain")


@dataclass(kw_only=True)
class ExperimentConfig(ModelOptions, PromptModeOption, DataDirOption, SeedOption):
    name: str = field(help="experiment name")
    out: str = field(help="run directory")
    seeds: list[int] | None = field(None, help="seeds to repeat the experiment with (default: [seed])")
    datasets: list[str] = field(["gsm8k"], help="training sets (registry names or files)")
    train_size: int | None = field(None, check=at_least(1),
                                   help="rows per training set, a seeded subset (None: all; the paper presets set "
                                        "paper_subsample for its > 10k -> 2000 rule)")
    methods: list[str] = field(["vanilla", "sdft"], choices=("vanilla", "sdft", "onpolicy"),
                               help="methods (use mix_ratios for mixes); onpolicy: on-policy self-distillation "
                                    "(Shenfeld et al. 2026) with TRL, on vanilla's rows")
    mix_ratios: list[float] = field([], check=each(within(0, 1)), help="extra mix ratios in (0, 1) for the sweep (Fig. 7/8)")
    train_sizes: list[int] = field([], check=each(at_least(1)), help="extra training-set sizes for the sweep (Fig. 5/6)")
    distill_templates: list[str] = field([], choices=tuple(TEMPLATES),
                                         help="extra distillation templates for the sweep (Table 4: distill_using vs "
                                              "distill_refer): each distils the default-size set again and adds SDFT arms")
    capacities: list[str] = field(["paper"], choices=("paper", "all-linear-r64"),
                                  help="LoRA capacities to train at: paper (r8 on q/v) and/or all-linear-r64, the "
                                       "matched capacity of sdft#15 (mixes and size sweeps run at the first only)")
    distill: DistillOptions = field(DistillOptions, help="distillation options (`sdft distill`)")
    train: TrainOptions = field(TrainOptions, help="training options (`sdft train`)")
    eval: EvalOptions = field(EvalOptions, help="evaluation options (`sdft eval`: benchmarks, limit, judge...)")
    shift: ShiftOptions = field(ShiftOptions, help="distribution shift")
    retention: RetentionOptions = field(RetentionOptions, help="retention of the seed's own answers (log-likelihood)")
    reference_likelihood: ReferenceLikelihoodOptions = field(
        ReferenceLikelihoodOptions, help="third-party likelihood: log-likelihood of reference answers no model here wrote")
    decision: DecisionOptions = field(DecisionOptions, help="the pre-registered SDFT-vs-vanilla rule at matched gain "
                                                            "(needs train.eval_at_steps for learning curves)")
    onpolicy: OnPolicyOptions = field(OnPolicyOptions, help="on-policy self-distillation options (method onpolicy)")
    target_benchmark: str | None = field(None,
                                         help="the benchmark of the task trained for (built-in, or declared in tasks): the x axis of the learning-vs-forgetting plot (default: the benchmark named like the first dataset)")

    def __post_init__(self):
        super().__post_init__()
        self.seeds = self.seeds or [self.seed]
        if (self.eval.judge_url or self.eval.judge_model) and "alpaca_eval" not in self.eval.benchmarks:
            self.eval.benchmarks = [*self.eval.benchmarks, "alpaca_eval"]  # a configured judge always gets its column
        for section in SECTIONS:
            for name in INHERITED:
                setattr(getattr(self, section), name, getattr(self, name))
        if self.target_benchmark:
            self.eval.check_benchmark_names("target_benchmark", [self.target_benchmark])
        self._check_decision()
        if self.distill.selection:  # a registry dataset's task is known now; a file's once it is read
            for dataset in self.datasets:
                spec = DATASETS.get(dataset)
                if spec or self.distill.task:
                    check_selection(self.distill.task or spec.task, self.distill.selection, "distill.selection")


    def _check_decision(self) -> None:
        """A decision needs what it reads: both methods, learning curves, a target, and measures the run computes."""
        decision = self.decision
        if not decision.gains:
            return
        if not {"vanilla", "sdft"} <= set(self.methods):
            raise UserError("decision: needs methods vanilla and sdft")
        if not self.train.eval_at_steps:
            raise UserError("decision: needs train.eval_at_steps (the learning curves it reads)")
        if not decision.measures:
            raise UserError("decision.measures: name at least one forgetting measure")
        target = self.target_benchmark or next((Path(d).stem for d in self.datasets), None)
        if target not in self.eval.benchmarks:
            raise UserError(f"decision: the target benchmark '{target}' is not evaluated (set target_benchmark and "
                            "list it in eval.benchmarks)")
        known = [*self.eval.benchmarks, *(["reference_likelihood"] if self.reference_likelihood.prompts else [])]
        for measure in decision.measures:
            if measure not in known:
                raise UserError(f"decision.measures: '{measure}' is not measured by this experiment "
                                f"(known: {', '.join(known)})")
        if decision.min_seeds > len(self.seeds):
            raise UserError(f"decision.min_seeds: {decision.min_seeds} is more than the {len(self.seeds)} seeds")


def load_experiment(path_or_preset: str, settings: list[str] = (), **overrides) -> ExperimentConfig:
    """The experiment of a YAML file (or a preset name) with `settings` applied (`key=value`, a dotted key for a
    section's option, the value read as YAML) and top-level `overrides` (out, model...), every key checked; errors name
    the file and key."""
    path = Path(path_or_preset)
    if not path.is_file() and (PRESETS_DIR / f"{path_or_preset}.yaml").is_file():
        path = PRESETS_DIR / f"{path_or_preset}.yaml"
    values = load_yaml(str(path))
    for setting in settings:
        apply_setting(values, setting)
    for section in SECTIONS:
        given = values.get(section)
        for key in given if isinstance(given, dict) else ():
            if key in INHERITED:
                raise UserError(f"{section}.{key}: set it once at the top level (every stage inherits it)", str(path))
            if key in OWNED.get(section, ()):
                raise UserError(f"{section}.{key}: the experiment sets it per stage (use train_size / train_sizes)", str(path))
            if section == "eval" and key == "tasks":
                raise UserError("eval.tasks: declare tasks in the top-level tasks: section", str(path))
    _declare_tasks(values, str(path))
    values.setdefault("name", path.stem)
    values.update({key: value for key, value in overrides.items() if value is not None})
    values.setdefault("out", f"runs/{values['name']}")
    return build_config(ExperimentConfig, values=values, source=str(path))


def _declare_tasks(values: dict, source: str) -> None:
    """The top-level `tasks:` moved into the eval section, declared first so that an error names the entry as the file
    spells it (tasks.<name>) and the sections' benchmark names can be checked against them."""
    tasks = values.pop("tasks", None)
    if tasks is None:
        return
    try:
        declare_tasks(tasks)
    except UserError as e:
        raise UserError(str(e), source) from None
    section = values.get("eval") or {}
    if isinstance(section, dict):  # anything else is reported as the eval section's own error
        values["eval"] = {**section, "tasks": tasks}


def apply_setting(values: dict, setting: str) -> None:
    """`train.learning_rate=1e-3` sets values["train"]["learning_rate"] = 0.001 (the value parsed as YAML, so lists,
    numbers and booleans keep their types); the key itself is checked with the rest of the experiment."""
    key, sep, text = setting.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set: expected key=value (e.g. train.learning_rate=1e-3), got '{setting}'")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"--set {key}: the value '{text}' is not valid YAML") from None
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(text)
        except ValueError:
            pass
    *sections, name = key.strip().split(".")
    target = values
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise UserError(f"--set {key}: '{section}' is not a section")
    target[name] = value


def section_values(options: Options) -> dict:
    """A section's options as keyword arguments for its stage's config (an `omit_default` option only when set, so
    adding one leaves the hashes of cached stages as they were)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
            if not (f.metadata.get("omit_default") and getattr(options, f.name) == _default(f))}


def _default(f: dataclasses.Field):
    """A field's default value, built by its factory where it has one (a list or a mapping)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass(kw_only=True)
class SettingsOption(Options):
    set: list[str] = field([], repeatable=True,
                           help="override one key of the experiment: key=value, a section's option as section.key "
                                "(e.g. --set train.learning_rate=1e-3 --set seeds=[1,2]); the value is read as YAML")


@dataclass(kw_only=True)
class RunConfig(SettingsOption):
    experiment: str = field(help="experiment YAML (or a preset name: demo, cpu-small, paper-gsm8k, ...)")
    out: str | None = field(None, help="run directory (default: the config's `out`, else runs/<name>)")
    model: str | None = field(None, help="seed model for every stage (default: the experiment's)")
    dry_run: bool = field(False, help="check the config, print the stage plan and exit")


@dataclass(kw_only=True)
class ReportConfig(Options):
    run_dir: str = field(help="run directory of `sdft run`")


@dataclass(kw_only=True)
class DemoConfig(ModelOptions, SettingsOption):
    out: str = field("demo_out", help="run directory")
    fresh: bool = field(False, help="delete a previous demo run first")
