"""The paper's prompt templates (arXiv 2402.13669 Fig. 3, 10–13; reference code main.py), rendered either through the
model's own chat template (default) or as the reference code's raw text (paper-faithful replication)."""

from __future__ import annotations

import string
from dataclasses import dataclass

from .errors import UserError

ALPACA_SYSTEM = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
DISTILL_SYSTEM = "Below are an instruction that describes a task along with a reference answer. "
GSM8K_SYSTEM = (
    "You are an expert in math. Below is a math question. Write a response that appropriately answers the question."
)
INSTRUCTION_USER = "### Instruction:\n{instruction}\n\n### Response:\n"
DISTILL_USER = "### Instruction:\n{instruction}\n\n### Reference Answer:\n{response}\n\n### Response:\n"


@dataclass(frozen=True)
class Template:
    """One system + user turn; `assistant_prefix` pre-fills the assistant turn (it is prompt, not target).

    `raw_style` picks the reference code's text layout: "alpaca" (system, blank line, user) or "llama2" ([INST] <<SYS>>).
    """

    name: str
    system: str
    user: str
    assistant_prefix: str = ""
    raw_style: str = "alpaca"

    @property
    def slots(self) -> set[str]:
        return {field for _, field, _, _ in string.Formatter().parse(self.user) if field}

    def fill(self, fields: dict) -> str:
        missing = self.slots - fields.keys()
        if missing:
            raise UserError(f"template '{self.name}' needs field(s) {sorted(missing)}")
        return self.user.format_map({k: fields[k] for k in self.slots})


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template("alpaca", ALPACA_SYSTEM, INSTRUCTION_USER),
        Template("distill_using", DISTILL_SYSTEM + "Using the reference answer as a guide, write your own response.", DISTILL_USER),
        Template("distill_refer", DISTILL_SYSTEM + "Refer to the reference answer and write your own response.", DISTILL_USER),
        Template("gsm8k", GSM8K_SYSTEM, "{instruction}", raw_style="llama2"),
        Template(
            "gsm8k_infer",
            GSM8K_SYSTEM + " Your final answer should be an integer at the end of your response, formatted as: The answer is {answer}.",
            "{instruction}",
            raw_style="llama2",
        ),
        Template(
            "gsm8k_distill",
            "You are an expert in math. Below are a math question and its reference answer. "
            "Refer to the reference answer and write a response that appropriately answers the question.",
            "{instruction}\n\n{response}",
            assistant_prefix="Great! Let's think step by step. ",
            raw_style="llama2",
        ),
        # Jailbreak evaluation: the GCG suffix is appended (after one space) to the instruction by the benchmark.
        Template("plain", "", "{instruction}"),
    ]
}


def get_template(name_or_template: str | Template | dict) -> Template:
    """A template by registry name, or a user template given in a config as {system, user, assistant_prefix}."""
    if isinstance(name_or_template, Template):
        return name_or_template
    if isinstance(name_or_template, dict):
        spec = dict(name_or_template)
        spec.setdefault("name", "custom")
        spec.setdefault("system", "")
        try:
            return Template(**spec)
        except TypeError as e:
            raise UserError(f"bad template definition: {e}") from None
    if name_or_template not in TEMPLATES:
        raise UserError(f"unknown template '{name_or_template}' (known: {', '.join(sorted(TEMPLATES))})")
    return TEMPLATES[name_or_template]


PROMPT_MODES = ("chat", "raw")


def check_prompt_mode(mode: str) -> str:
    """Stages call this before loading a model, so a typo fails in a second, not after the load."""
    if mode not in PROMPT_MODES:
        raise UserError(f"unknown prompt mode '{mode}' (chat | raw)")
    return mode


def render(template: str | Template | dict, fields: dict, tokenizer=None, mode: str = "chat") -> str:
    """The full prompt text, ending where the model's answer starts (after any assistant prefix)."""
    template = get_template(template)
    user = template.fill(fields)
    system = fields.get("system") or template.system  # a chat row's own system turn wins
    history = fields.get("history") or []
    check_prompt_mode(mode)
    if mode == "raw" or tokenizer is None or not getattr(tokenizer, "chat_template", None):
        earlier = "".join(f"{turn['content']}\n\n" for turn in history)
        return render_raw(template, earlier + user, system)
    messages = ([{"role": "system", "content": system}] if system else []) + list(history) + [{"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + template.assistant_prefix


def render_raw(template: Template, user: str, system: str) -> str:
    """The reference code's layout (LLaMA-Factory templates in sail-sg/sdft main.py); BOS is left to the tokenizer."""
    if template.raw_style == "llama2":
        system_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else ""
        prompt = f"[INST] {system_block}{user} [/INST]"
        return prompt + (" " + template.assistant_prefix if template.assistant_prefix else "")
    prefix = f"{system}\n\n" if system else ""
    return prefix + user + template.assistant_prefix
