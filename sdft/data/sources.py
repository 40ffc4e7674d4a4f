"""Where every data file sdft reads comes from, so that a machine without ../shared/data can fetch the same bytes.

Each entry pins the upstream file(s) its local copy was made from (a raw GitHub URL at the commit that
../shared/data/*/SOURCE.md names), the conversion from the upstream schema into the rows sdft reads, and the sha256 of
the converted file: a download reproduces the local copy byte for byte, or it is refused and nothing is written.
`sdft data download` writes into `paths.download_dir()`, where `paths.data_dir` looks when no local folder exists.
The base URL can point at a mirror laid out like raw.githubusercontent.com (OWNER/REPO/COMMIT/PATH): `mirror=` or
$SDFT_DATA_MIRROR.
"""

from __future__ import annotations

import ast
import bz2
import csv
import gzip
import hashlib
import io
import json
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from sdft.core.errors import UserError
from sdft.core.registry import registry

RAW_GITHUB = "https://raw.githubusercontent.com"
MIRROR_ENV = "SDFT_DATA_MIRROR"
FETCH_TIMEOUT_S = 60

UpstreamFiles = dict[str, bytes]  # upstream path -> its bytes, in the order the entry lists them


@dataclass(frozen=True)
class Conversion:
    """Upstream bytes -> the file sdft reads; `text` is what `sdft data list` says it does."""

    text: str
    apply: Callable[[UpstreamFiles], bytes]


@dataclass(frozen=True)
class Pinned:
    """Upstream files at one commit of one repository, their conversion, and the checksum of the result."""

    repo: str  # owner/name
    commit: str
    files: tuple[str, ...]
    conversion: Conversion
    sha256: str

    def urls(self, base: str) -> list[str]:
        return [f"{base.rstrip('/')}/{self.repo}/{self.commit}/{file}" for file in self.files]

    def describe(self) -> str:
        more = f" (+{len(self.files) - 1} more)" if len(self.files) > 1 else ""
        return f"{self.repo}@{self.commit[:8]} {self.files[0]}{more}: {self.conversion.text}"


@dataclass(frozen=True)
class DataFile:
    """One file sdft reads, relative to a data directory; without a reproducible download (`pinned` None), `unpinned`
    says why."""

    path: str
    pinned: Pinned | None
    hub_id: str | None = None  # the natural Hugging Face dataset, for information (downloads use `pinned`)
    unpinned: str | None = None

    @property
    def folder(self) -> str:
        return self.path.split("/")[0]

    def describe(self) -> str:
        origin = self.pinned.describe() if self.pinned else f"no pinned download: {self.unpinned}"
        return f"{origin} [hub: {self.hub_id}]" if self.hub_id else origin


# ---- conversions ----------------------------------------------------------------------------------------------------


def _one_file(convert: Callable[[bytes], bytes]) -> Callable[[UpstreamFiles], bytes]:
    def apply(files: UpstreamFiles) -> bytes:
        (data,) = files.values()
        return convert(data)

    return apply


def _jsonl(rows: Iterable[dict]) -> bytes:
    """sdft's JSONL, as ../shared/data was written: one object a line, json's default separators, non-ASCII kept."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def _csv_rows(data: bytes) -> bytes:
    return _jsonl(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def _alpaca_eval_rows(data: bytes) -> bytes:
    """AlpacaEval's annotations compare output_1 (text-davinci-003, the eval set's reference) with output_2; the
    eval set is instruction + output_1 under its own names."""
    return _jsonl({"instruction": row["instruction"], "output": row["output_1"], "generator": row["generator_1"],
                   "dataset": row["dataset"]} for row in json.loads(data))


def _mmlu_rows(files: UpstreamFiles) -> bytes:
    """The original data.tar layout: one header-less CSV per subject (question, A, B, C, D, answer letter)."""
    return _jsonl({"subject": PurePosixPath(path).name.removesuffix("_test.csv"), "question": question,
                   "choices": [a, b, c, d], "answer": answer}
                  for path, data in files.items()
                  for question, a, b, c, d, answer in csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


ARC_PREFIX = "Please choose the correct answer to the question: "
WINOGRANDE_PREFIX = "Please choose the correct answer to fill in the blank to complete the given sentence: "


def _arc_rows(data: bytes) -> bytes:
    """LLM-Adapters renders each question as '<prefix><question>\\n\\nAnswer1: <c1> Answer2: <c2> ...\\n\\nAnswer
    format: answer1/.../answerN' with answer 'answerK'; parsed back (re-rendering gives its text byte for byte)."""
    rows = []
    for index, row in enumerate(json.loads(data)):
        body, _, answer_format = row["instruction"].removeprefix(ARC_PREFIX).rpartition("\n\nAnswer format: ")
        question, _, rest = body.rpartition("\n\nAnswer1: ")
        choices = []
        for number in range(2, answer_format.count("/") + 2):
            choice, _, rest = rest.partition(f" Answer{number}: ")
            choices.append(choice)
        rows.append({"row": index, "question": question, "choices": [*choices, rest],
                     "answer_index": int(row["answer"].removeprefix("answer")) - 1})
    return _jsonl(rows)


def _winogrande_rows(data: bytes) -> bytes:
    """LLM-Adapters renders each item as '<prefix><sentence>\\n\\nOption1: <o1> Option2: <o2> Answer format:
    option1/option2' with answer 'option1' or 'option2'; parsed back into WinoGrande's own fields."""
    rows = []
    for index, row in enumerate(json.loads(data)):
        sentence, _, rest = row["instruction"].removeprefix(WINOGRANDE_PREFIX).rpartition("\n\nOption1: ")
        option1, _, rest = rest.partition(" Option2: ")
        rows.append({"row": index, "sentence": sentence, "option1": option1,
                     "option2": rest.removesuffix(" Answer format: option1/option2"),
                     "answer": row["answer"].removeprefix("option")})
    return _jsonl(rows)


HELLASWAG_LINES_PER_ITEM = 6  # "activity_label: ctx", gold label, four endings


def _hellaswag_rows(data: bytes) -> bytes:
    lines = bz2.decompress(data).decode("utf-8").split("\n")
    rows = []
    for index in range(len(lines) // HELLASWAG_LINES_PER_ITEM):
        head, label, *endings = lines[index * HELLASWAG_LINES_PER_ITEM:(index + 1) * HELLASWAG_LINES_PER_ITEM]
        activity_label, _, ctx = head.partition(": ")
        rows.append({"row": index, "activity_label": activity_label, "ctx": ctx, "label": int(label),
                     "endings": endings})
    return _jsonl(rows)


def _python_list(name: str) -> Callable[[bytes], bytes]:
    """The list literal a Python module assigns to `name`, as a JSON array (indent 1, no final newline)."""

    def convert(data: bytes) -> bytes:
        module = ast.parse(data)
        value = next(ast.literal_eval(node.value) for node in module.body if isinstance(node, ast.Assign)
                     and any(isinstance(target, ast.Name) and target.id == name for target in node.targets))
        return json.dumps(value, indent=1, ensure_ascii=False).encode("utf-8")

    return convert


GCG_TEMPLATE = "alpaca_gcg"
GCG_BEFORE, GCG_AFTER = "### Instruction:\n{{content}} ", "\n\n### Response:\n"


def _gcg_suffix(data: bytes) -> bytes:
    """sdft's main.py registers template `alpaca_gcg` whose user turn is the instruction, a space, the GCG suffix and
    the response header: the suffix is what lies between them."""
    for node in ast.walk(ast.parse(data)):
        keywords = {k.arg: k.value for k in getattr(node, "keywords", [])}
        if isinstance(node, ast.Call) and isinstance(keywords.get("name"), ast.Constant) \
                and keywords["name"].value == GCG_TEMPLATE:
            (slot,) = ast.literal_eval(keywords["format_user"].keywords[0].value)
            if slot.startswith(GCG_BEFORE) and slot.endswith(GCG_AFTER):
                return (slot[len(GCG_BEFORE):-len(GCG_AFTER)] + "\n").encode("utf-8")
    raise ValueError(f"no template '{GCG_TEMPLATE}' of the form {GCG_BEFORE!r} + suffix + {GCG_AFTER!r}")


COPY = Conversion("byte-identical copy", _one_file(lambda data: data))
GUNZIP = Conversion("gzip -> plain", _one_file(gzip.decompress))
JSON_ARRAY = Conversion("JSON array -> JSONL", _one_file(lambda data: _jsonl(json.loads(data))))
CSV_ROWS = Conversion("CSV with header -> JSONL", _one_file(_csv_rows))
ALPACA_EVAL = Conversion("JSON array -> JSONL: instruction, output_1 as output, generator_1 as generator, dataset",
                         _one_file(_alpaca_eval_rows))
MMLU_CSVS = Conversion("one header-less CSV per subject -> JSONL: subject, question, choices, answer", _mmlu_rows)
ARC_PARSED = Conversion("LLM-Adapters' prompts (JSON array) parsed -> JSONL: row, question, choices, answer_index",
                        _one_file(_arc_rows))
WINOGRANDE_PARSED = Conversion("LLM-Adapters' prompts (JSON array) parsed -> JSONL: row, sentence, option1, option2, "
                               "answer", _one_file(_winogrande_rows))
HELLASWAG_TEXT = Conversion("bz2 text, 6 lines an item -> JSONL: row, activity_label, ctx, label, endings",
                            _one_file(_hellaswag_rows))
REFUSAL_PREFIXES = Conversion("the `_test_prefixes` list of keyword_eval.py -> JSON array",
                              _one_file(_python_list("_test_prefixes")))
GCG_SUFFIX = Conversion(f"the suffix of main.py's template '{GCG_TEMPLATE}' -> one text line", _one_file(_gcg_suffix))


# ---- the registry ---------------------------------------------------------------------------------------------------

SDFT = ("sail-sg/sdft", "bfb6c255fccdce7459235c20f19a3b9817a9cd5d")
HUMAN_EVAL = ("openai/human-eval", "6d43fb980f9fee3c892a914eda09951f772ad10d")
IFEVAL = ("google-research/google-research", "19638399cc9e03623c5b9087a1d6fa8813974ce9")
ALPACA_EVAL_REPO = ("tatsu-lab/alpaca_eval", "cd543a149df89434d8a54582c0151c0b945c3d20")
LLM_TUNING_SAFETY = ("LLM-Tuning-Safety/LLMs-Finetuning-Safety", "8a3b38f11be1c3829e2b0ed379d3661ebc84e7db")
COT_TRANSPARENCY = ("raybears/cot-transparency", "f6874394ba80a439237e4d7581dddc30d40c1830")
LLM_ADAPTERS = ("AGI-Edgerunners/LLM-Adapters", "816657208af4db747803f87ba40a4c71383fed7a")
HELLASWAG_TEXT_DATA = ("klosax/hellaswag_text_data", "1105d370f8340eac3c63a91fd1fa58e8999f9505")
TRUTHFULQA = ("newBlanco/Modified_truthX", "39e91d49c5b26bdef976da70be6c12829739e83e")  # vendors sylinrl/TruthfulQA

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics high_school_mathematics "
    "high_school_microeconomics high_school_physics high_school_psychology high_school_statistics "
    "high_school_us_history high_school_world_history human_aging human_sexuality international_law jurisprudence "
    "logical_fallacies machine_learning management marketing medical_genetics miscellaneous moral_disputes "
    "moral_scenarios nutrition philosophy prehistory professional_accounting professional_law professional_medicine "
    "professional_psychology public_relations security_studies sociology us_foreign_policy virology world_religions"
).split()


def _pin(repo_commit: tuple[str, str], files: str | list[str], conversion: Conversion, sha256: str) -> Pinned:
    return Pinned(*repo_commit, tuple([files] if isinstance(files, str) else files), conversion, sha256)


SOURCES: dict[str, DataFile] = registry("data file", ((entry.path, entry) for entry in [
    # benchmarks (sdft.evaluation.benchmarks) and their shared resources
    DataFile("gsm8k/sdft_gsm8k_test.jsonl", _pin(SDFT, "data/gsm8k/gsm8k_test.json", JSON_ARRAY,
             "0d2d5ad3bc0a8ac2738a1894776f6b9bfcb0b25785874e2d3246dc0aadf9dfac"), hub_id="openai/gsm8k"),
    DataFile("multiarith/sdft_multiarith_test.jsonl", _pin(SDFT, "data/multiarith_test.json", JSON_ARRAY,
             "c460628b6c7cb29d7560f5e10f626eec39fae359dced21e15c83efd577f144df"), hub_id="ChilleD/MultiArith"),
    DataFile("openfunctions/sdft_openfunction_test.jsonl", _pin(SDFT, "data/openfunction/openfunction_test.json",
             JSON_ARRAY, "8f4162ac0a2b499da16a5a00960b15275c8fa4b353de1e24ec8712414aa6ba35")),
    DataFile("humaneval/HumanEval.jsonl", _pin(HUMAN_EVAL, "data/HumanEval.jsonl.gz", GUNZIP,
             "1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2"), hub_id="openai/openai_humaneval"),
    DataFile("advbench/harmful_behaviors.jsonl", _pin(SDFT, "data/harmful_behaviors.csv", CSV_ROWS,
             "75629618df8265c80df8cee615afdd7bc807c454c2229aad7e7b135024d144a3")),
    DataFile("advbench/gcg_suffixes.txt", _pin(SDFT, "main.py", GCG_SUFFIX,
             "51f2a196a2f89178b33b958ddc245ba8cb4c08248a1be885139587d0161c2f1d")),
    DataFile("refusal_keywords/qi2024_refusal_keywords.json", _pin(
             LLM_TUNING_SAFETY, "llama2/safety_evaluation/keyword_eval.py", REFUSAL_PREFIXES,
             "6568c778bcc7e26507f78dc6fda4d947b93a06dbe1b15faf7ce60e539ef5d99a")),
    DataFile("ifeval/input_data.jsonl", _pin(IFEVAL, "instruction_following_eval/data/input_data.jsonl", COPY,
             "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49"), hub_id="google/IFEval"),
    # the AlpacaEval benchmark and the retention prompts
    DataFile("alpaca_eval/alpaca_eval.jsonl", _pin(
             ALPACA_EVAL_REPO, "results/alpaca-7b/alpaca_eval_gpt4/annotations.json", ALPACA_EVAL,
             "9005ad7fe0d36c49f01650647cf003da3af599736fff6170916fc3becfe5ada9"), hub_id="tatsu-lab/alpaca_eval"),
    # knowledge tasks (sdft.evaluation.knowledge; without a local copy they run lm-eval's stock hub tasks)
    DataFile("mmlu/mmlu_test.jsonl", _pin(COT_TRANSPARENCY, [f"data/mmlu/test/{s}_test.csv" for s in MMLU_SUBJECTS],
             MMLU_CSVS, "74863bd5293166cff14a0f9b4ff0ecddfd89e996f38068505c1e5fd660829d50"), hub_id="cais/mmlu"),
    DataFile("arc_challenge/arc_challenge_test_parsed.jsonl", _pin(LLM_ADAPTERS, "dataset/ARC-Challenge/test.json",
             ARC_PARSED, "6253ac767f8ad56e0996ea217ef94ec7bfd418a18053c8847a1c687e396e70e7"),
             hub_id="allenai/ai2_arc"),
    DataFile("hellaswag/hellaswag_val.jsonl", _pin(HELLASWAG_TEXT_DATA, "hellaswag_val_full.txt.bz2", HELLASWAG_TEXT,
             "24390670ea49b1057e3f34f19b01791b467d1645eee3192f65336ce05e02c256"), hub_id="Rowan/hellaswag"),
    DataFile("winogrande/winogrande_dev_parsed.jsonl", _pin(LLM_ADAPTERS, "dataset/winogrande/test.json",
             WINOGRANDE_PARSED, "02fb6da70f334691d88f08c2c12cf51842463b03810ff669d73a63ba9ac6e33f"),
             hub_id="allenai/winogrande"),
    DataFile("truthfulqa/mc_task.jsonl", _pin(TRUTHFULQA, "TruthfulQA/data/mc_task.json", JSON_ARRAY,
             "acbee5ce4af7156384d916ebcb952771fe1e2b2ee1941afae88a9726241fbca8"), hub_id="truthfulqa/truthful_qa"),
    # training sets (sdft.data.datasets)
    DataFile("gsm8k/sdft_gsm8k_train.jsonl", _pin(SDFT, "data/gsm8k/gsm8k_train.json", JSON_ARRAY,
             "ff79332e81d5a7a94d0201ccb2b409c9b3feecf7fdab17db4f8de6b5ff8e1b0b"), hub_id="openai/gsm8k"),
    DataFile("openfunctions/sdft_openfunction_train.jsonl", _pin(SDFT, "data/openfunction/openfunction_train.json",
             JSON_ARRAY, "fa37ca6e735631dd2008f19c17387134966938b8cee496977788e90c11db6a32")),
    DataFile("alpaca/sdft_alpaca_train.jsonl", _pin(SDFT, "data/alpaca/alpaca_train.json", JSON_ARRAY,
             "a61388088c0014fd82a6dbc511a17898346f8fd20b575891618c505373546010"), hub_id="tatsu-lab/alpaca"),
    DataFile("dolly/sdft_dolly_train.jsonl", _pin(SDFT, "data/dolly/dolly_train.json", JSON_ARRAY,
             "c23c32d9c0a5bf0cd8f20c6524d6fedd26d4b47b13ce4fc16eeda2f6efc731b7"),
             hub_id="databricks/databricks-dolly-15k"),
    DataFile("lima/sdft_lima_train.jsonl", _pin(SDFT, "data/lima/lima_train.json", JSON_ARRAY,
             "0837c58ae0e8bf0880fe6e5c0af57ba68ec2b9cdb6d929bea706d81a77c57208"), hub_id="GAIR/lima"),
    DataFile("magicoder/magicoder_train.jsonl", None, hub_id="ise-uiuc/Magicoder-OSS-Instruct-75K",
             unpinned="sail-sg/sdft ships data/magicoder/magicoder_train.json, but no copy was kept to convert and "
                      "checksum; the dataset registry reads the hub copy"),
]))
FOLDERS = tuple(dict.fromkeys(entry.folder for entry in SOURCES.values()))
NAMES = (*SOURCES, *FOLDERS)  # what `sdft data download` accepts: a file, or a folder for all its files


def select(names: Iterable[str] = ()) -> list[DataFile]:
    """The entries `names` (file paths or folders) denote, in registry order; none named: every entry."""
    names = list(names)
    unknown = [name for name in names if name not in NAMES]
    if unknown:
        raise UserError(f"unknown data file or folder {', '.join(unknown)} (see `sdft data list`)")
    return [entry for entry in SOURCES.values() if not names or entry.path in names or entry.folder in names]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            return response.read()
    except (OSError, ValueError) as e:  # offline, refused, HTTP error (URLError is an OSError), unknown URL type
        raise UserError(f"cannot fetch {url} ({getattr(e, 'reason', e)})") from None


def _write_atomically(path: Path, data: bytes) -> None:
    """A temp file in the target's folder renamed over it, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download(entry: DataFile, to: Path, mirror: str | None = None) -> bool:
    """Fetch, convert and verify `entry` into `to/entry.path`; False when a verified copy was already there. A
    checksum mismatch is a UserError and writes nothing."""
    if entry.pinned is None:
        raise UserError(f"{entry.path}: no pinned download ({entry.unpinned})")
    target = to / entry.path
    if target.is_file() and sha256_of(target) == entry.pinned.sha256:
        return False
    base = mirror or os.environ.get(MIRROR_ENV) or RAW_GITHUB
    urls = entry.pinned.urls(base)
    upstream = {file: _fetch(url) for file, url in zip(entry.pinned.files, urls)}
    try:
        data = entry.pinned.conversion.apply(upstream)
    except Exception as e:  # any failure to convert means the upstream is not the pinned file
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        raise UserError(f"{entry.path}: {urls[0]} is not in the pinned form ({reason}); nothing written") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.pinned.sha256:
        raise UserError(f"{entry.path}: checksum mismatch (sha256 {digest[:16]}..., pinned "
                        f"{entry.pinned.sha256[:16]}...) from {urls[0]}; nothing written")
    _write_atomically(target, data)
    return True
