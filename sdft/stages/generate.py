"""`sdft generate`: complete every row of an input file with a model (+ adapter), resumably."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import field
from ..data import normalise_prompt_rows
from ..engines.generation import GenerationConfig, generate_rows, make_engine
from ..engines.models import EMBEDDED_MODEL
from ..templates import check_prompt_mode, get_template, render


@dataclass
class GenerateConfig:
    input: str = field(help="JSONL/JSON/CSV/Parquet rows with an instruction (or prompt) column and optional id")
    out: str = field(help="output JSONL: id, prediction, finish_reason, n_tokens per input row")
    model: str = field(EMBEDDED_MODEL, help="HF hub id, local HF folder, .gguf file, or smollm2-135m-instruct")
    adapter: str | None = field(None, help="PEFT adapter folder from `sdft train`")
    template: str = field("alpaca", help="prompt template")
    prompt_mode: str = field("chat", help="chat | raw")
    columns: dict = field({}, help="column mapping, e.g. {instruction: question}")
    dtype: str = field("auto", help="auto | fp32 | bf16 | fp16")
    max_new_tokens: int = field(512, help="generation length cap")
    temperature: float = field(0.0, help="0 = greedy")
    top_p: float = field(1.0, help="nucleus sampling mass")
    stop: list = field([], help="stop strings")
    batch_size: int = field(96, help="rows decoding at once at most")
    backend: str = field("auto", help="auto | hf | vllm")
    seed: int = field(42, help="sampling seed")


def generate(config: GenerateConfig) -> list[dict]:
    rows = normalise_prompt_rows(config.input, config.columns)
    template = get_template(config.template)
    check_prompt_mode(config.prompt_mode)
    engine = make_engine(config.model, GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                                        top_p=config.top_p, seed=config.seed, batch_size=config.batch_size,
                                                        stop=list(config.stop), backend=config.backend),
                         dtype=config.dtype, adapter=config.adapter)
    items = [(row["id"], render(template, row, engine.tokenizer, config.prompt_mode)) for row in rows]
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    return generate_rows(engine, items, config.out, progress="generate")
