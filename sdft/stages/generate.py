"""`sdft generate`: complete every row of an input file with a model (+ adapter), resumably."""

from __future__ import annotations

from pathlib import Path

from sdft.data.datasets import normalise_prompt_rows
from sdft.data.templates import get_template, render
from sdft.engines.generation import generate_rows, make_engine
from sdft.options import GenerateConfig


def generate(config: GenerateConfig) -> list[dict]:
    rows = normalise_prompt_rows(config.input, config.columns)
    template = get_template(config.template or "alpaca")
    engine = make_engine(config.model, config.dtype, config, config.adapter)
    items = [(row["id"], render(template, row, engine.tokenizer, config.prompt_mode)) for row in rows]
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    return generate_rows(engine, items, config.decoding(), config.out, progress="generate")
