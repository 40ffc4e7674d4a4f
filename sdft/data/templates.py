"""The paper's prompt templates (arXiv 2402.13669 Fig. 3, 10–13; reference code main.py), rendered either through the
model's own chat template (default) or as the reference code's raw text (paper-faithful replication), and `chat`, a
conversation as it is (a `messages` dataset's training prompt)."""

from __future__ import annotations

import string
from dataclasses import dataclass

from sdft.core.errors import UserError
from sdft.core.registry import registry

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

    `raw_style` picks the reference code's text layout (`RAW_STYLES`): "alpaca" (system, blank line, user), "llama2"
    (<<SYS>> block, then [INST] user [/INST]) or "completion" (a bare prompt for the model to continue, rendered the same
    in both prompt modes, as bigcode-evaluation-harness prompts a model).
    """

    name: str
    system: str
    user: str
    assistant_prefix: str = ""
    raw_style: str = "alpaca"

    @property
    def slots(self) -> set[str]:
        return {field for _, field, _, _ in string.Formatter().parse(self.user) if field}

    @property
    def shows_reference(self) -> bool:
        """A rewrite prompt (`response` is the reference answer): its system text is the rewrite instruction."""
        return "response" in self.slots

    def fill(self, fields: dict) -> str:
        missing = self.slots - fields.keys()
        if missing:
            raise UserError(f"template '{self.name}' needs field(s) {sorted(missing)}")
        return self.user.format_map({k: fields[k] for k in self.slots})


TEMPLATES: dict[str, Template] = registry("template", (
    (t.name, t)
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
        # bigcode-evaluation-harness `humanevalsynthesize-python --prompt octocoder` (the reference's HumanEval run):
        # the instruction, then the function stub for the model to continue.
        Template("octocoder", "", "Question: {instruction}\n\nAnswer:\n{stub}", raw_style="completion"),
        # A conversation as it is, no scaffold: the row's own system turn and earlier turns, then its last user turn.
        # The training template of a `messages` dataset (`LoadedDataset.train_template`).
        Template("chat", "", "{instruction}"),
    ]
))


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
    system, lead = system_turn(template, fields)
    history = fields.get("history") or []
    check_prompt_mode(mode)
    if mode == "raw" or template.raw_style == "completion" or tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return render_raw(template, fields, system, tokenizer, lead)
    user = lead + template.fill(fields)
    messages = ([{"role": "system", "content": system}] if system else []) + list(history) + [{"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + template.assistant_prefix


def system_turn(template: Template, fields: dict) -> tuple[str, str]:
    """(the system turn, text opening the last user turn). A chat row's own system turn wins over the template's system
    text, as LLaMA-Factory's system column does, except that a rewrite prompt's instruction is never lost: it then opens
    the last user turn, after the row's system turn and earlier turns."""
    own = fields.get("system")
    if not own:
        return template.system, ""
    return own, f"{template.system}\n\n" if template.shows_reference and template.system else ""


# The reference's text layouts: LLaMA-Factory `Template._encode` on sail-sg/sdft branch `reproduce`
# (src/llmtuner/data/template.py). Its gsm8k templates' names lack "llama2", so the base layout applies to them too:
# BOS + prefix (the system block) + separator + prompt; an earlier turn ends with its answer + EOS, and each later one
# starts with separator + BOS. Query and reference answer are stripped where the prompt takes them. (The main branch's
# main.py renders [INST] <<SYS>>... instead; we follow `reproduce`, which produced the paper's numbers.)
RAW_STYLES = {
    # style: (prefix holding the system prompt, separator, prompt around the filled user turn)
    "alpaca": ("{system}", "\n\n", "{user}"),
    "llama2": ("<<SYS>>\n{system}\n<</SYS>>\n\n", "", "[INST] {user} [/INST]"),
}


def reference_bos(tokenizer) -> str:
    """The BOS text LLaMA-Factory puts first: the tokenizer's BOS unless it has none or does not add one."""
    if tokenizer is None or getattr(tokenizer, "bos_token_id", None) is None or not getattr(tokenizer, "add_bos_token", True):
        return ""
    return tokenizer.bos_token


def render_raw(template: Template, fields: dict, system: str, tokenizer=None, lead: str = "") -> str:
    """The reference code's text, BOS (and the EOS closing each earlier turn) included when a tokenizer is given;
    `lead` opens the last user turn (`system_turn`)."""
    bos = reference_bos(tokenizer)
    if template.raw_style == "completion":
        # bigcode-evaluation-harness strips the assembled prompt; its tokenizer call adds BOS.
        return bos + template.fill({k: v.strip() if k == "instruction" else v for k, v in fields.items()}).strip()
    prefix, sep, prompt = RAW_STYLES[template.raw_style]
    eos = getattr(tokenizer, "eos_token", None) or ""
    history = fields.get("history") or []
    gap = " " if template.raw_style == "llama2" and template.assistant_prefix else ""

    def turn(query: str, response: str | None, opening: str = "") -> str:
        stripped = {**fields, "instruction": query.strip()}
        if response is not None:
            stripped["response"] = response.strip()
        return prompt.format(user=opening + template.fill(stripped)) + gap + template.assistant_prefix

    head = prefix.format(system=system)
    text = bos + (head + sep if head else "")
    for user_turn, assistant_turn in zip(history[::2], history[1::2]):
        answer = assistant_turn["content"]
        text += turn(user_turn["content"], answer) + answer + eos + sep + bos
    return text + turn(fields["instruction"], fields.get("response"), lead)
