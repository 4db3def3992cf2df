"""SFT loss on reply tokens only; sampling with log-probs; best-of-n."""

import math

import pytest
import torch

from training.ml.checkpoint import load_policy
from training.ml.generation import SamplingConfig, best_of_n, generate, truncate_after_eos
from training.ml.sft import IGNORE, SFTConfig, build_sequences, evaluate, train_sft
from training.ml.synthetic import sentence

import random

rng = random.Random(0)
DEMOS = [([{"role": "user", "content": sentence(rng, 8)}], "certainly " + sentence(rng, 6, good=2)) for _ in range(64)]


def test_labels_cover_reply_tokens_only(tiny_policy_dir):
    _, tokenizer = load_policy(tiny_policy_dir)
    (ids, labels), = build_sequences(tokenizer, DEMOS[:1], SFTConfig())
    prompt_len = sum(1 for label in labels if label == IGNORE)
    assert prompt_len > 0 and labels[prompt_len:] == ids[prompt_len:]
    assert ids[-1] == tokenizer.eos_token_id


def test_sft_lowers_reply_loss(tiny_policy_dir):
    torch.manual_seed(0)
    model, tokenizer = load_policy(tiny_policy_dir)
    sequences = build_sequences(tokenizer, DEMOS, SFTConfig())
    before = evaluate(model, sequences, tokenizer.pad_token_id)["val_loss"]
    metrics = train_sft(model, tokenizer, DEMOS, SFTConfig(lr=2e-3, epochs=4, batch_size=8), val_demonstrations=DEMOS)
    assert metrics["val_loss"] < before - 1.0
    assert metrics["val_perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))


def test_truncate_after_eos():
    response = torch.tensor([[5, 6, 2, 7, 8], [5, 6, 7, 8, 9]])
    truncated, mask, has_eos = truncate_after_eos(response, eos_id=2, pad_id=0)
    assert truncated.tolist() == [[5, 6, 2, 0, 0], [5, 6, 7, 8, 9]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert has_eos.tolist() == [True, False]


def test_generate_n_samples_with_logprobs_and_best_of_n(tiny_policy_dir):
    torch.manual_seed(0)
    model, tokenizer = load_policy(tiny_policy_dir)
    prompts = [demo[0] for demo in DEMOS[:3]]
    samples = generate(model, tokenizer, prompts, SamplingConfig(n=4, temperature=1.0, max_new_tokens=12, batch_size=5))
    assert [len(s) for s in samples] == [4, 4, 4]
    for options in samples:
        for sample in options:
            assert sample.logprob <= 0 and math.isfinite(sample.logprob) and 1 <= sample.n_tokens <= 12
    longest = lambda ps, texts: torch.tensor([float(len(t)) for t in texts])  # noqa: E731
    best = best_of_n(prompts, samples, longest)
    for (sample, score), options in zip(best, samples):
        assert score == max(len(s.text) for s in options) and sample.text in [s.text for s in options]
