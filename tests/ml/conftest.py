"""Tiny models built here, saved with save_pretrained, and loaded through the same code
path as a user's checkpoint folder."""

import pytest
import torch

from training.ml.bootstrap import DefaultModelConfig, new_policy, save_new_model, train_bpe_tokenizer
from training.ml.synthetic import corpus

TINY = DefaultModelConfig(vocab_size=600, n_layer=2, n_embd=64, n_head=2, n_positions=256)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_bpe_tokenizer(corpus(), TINY.vocab_size)


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory, tiny_tokenizer):
    """A random-init 2-layer GPT-2 and its BPE tokenizer, as a checkpoint folder."""
    path = tmp_path_factory.mktemp("models") / "tiny-policy"
    save_new_model(new_policy(tiny_tokenizer, TINY), tiny_tokenizer, path)
    return path


@pytest.fixture(autouse=True)
def two_threads():
    torch.set_num_threads(2)
