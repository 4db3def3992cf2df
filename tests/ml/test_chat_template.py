"""Every policy the app saves carries a chat template that renders a conversation exactly as
the trainers do (training/ml/text.py), and a generation config a server can sample with."""

import json
from copy import deepcopy

import pytest
from transformers import AutoTokenizer, GenerationConfig

from training.ml.bootstrap import new_policy, save_new_model
from training.ml.checkpoint import load_policy, save_policy
from training.ml.text import TRANSCRIPT_CHAT_TEMPLATE, render_prompt, render_reply, tokenize_prompt

from ..conftest import TINY

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two\nlines, and {{ braces }} and {% tags %}"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1 with 'quotes' and \"more\""}, {"role": "user", "content": "Q2 ünïcode ✓"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_the_transcript_template_renders_as_the_trainers_do(tiny_tokenizer, messages):
    copy = deepcopy(tiny_tokenizer)
    copy.chat_template = TRANSCRIPT_CHAT_TEMPLATE
    served = copy.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert served == render_prompt(messages, None)
    assert served.endswith("\n\nAssistant:")
    # with the template set, the trainers still use the transcript form, reply after a space
    assert render_prompt(messages, copy) == served and render_reply("ok", copy) == " ok"
    assert tokenize_prompt(copy, messages, 10_000) == copy(served)["input_ids"]


def test_a_real_chat_models_template_stays_its_own(tiny_tokenizer):
    copy = deepcopy(tiny_tokenizer)
    copy.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    assert render_prompt(CONVERSATIONS[0], copy) == "<user>Hi<assistant>"
    assert render_reply("ok", copy) == "ok"


def test_saved_policies_carry_the_template_and_sample(tmp_path, tiny_tokenizer):
    bootstrapped = save_new_model(new_policy(tiny_tokenizer, TINY), tiny_tokenizer, tmp_path / "new")
    policy, tokenizer = load_policy(bootstrapped)
    assert tokenizer.chat_template == TRANSCRIPT_CHAT_TEMPLATE
    tokenizer.chat_template = None  # an older checkpoint without one: saving a version adds it
    saved = save_policy(policy, tokenizer, tmp_path / "version")
    for folder in (bootstrapped, saved):
        reloaded = AutoTokenizer.from_pretrained(folder)
        assert reloaded.apply_chat_template(CONVERSATIONS[2], tokenize=False, add_generation_prompt=True) == render_prompt(CONVERSATIONS[2])
        generation = GenerationConfig.from_pretrained(folder)
        assert generation.do_sample is True
        assert generation.eos_token_id == reloaded.eos_token_id and generation.pad_token_id == reloaded.pad_token_id
        assert json.loads((folder / "config.json").read_text())["n_positions"] == TINY.n_positions
