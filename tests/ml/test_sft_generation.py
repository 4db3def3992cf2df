"""SFT loss on reply tokens only; sampling with log-probs; best-of-n; the reply-only LM head."""

import math

import pytest
import torch

from training.ml.checkpoint import load_policy
from training.ml.generation import (
    SamplingConfig,
    best_of_n,
    forward_response,
    generate,
    pad_left,
    position_ids,
    sample_responses,
    truncate_after_eos,
)
from training.ml.losses import logprobs_from_logits
from training.ml.sft import IGNORE, SFTConfig, build_sequences, evaluate, train_sft
from training.ml.text import fit_example, fit_to_positions, position_limit, prompt_room
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


def test_fit_to_positions_cuts_the_oldest_prompt_tokens_then_the_reply():
    assert fit_to_positions([1, 2, 3], [4, 5], 8) == ([1, 2, 3], [4, 5])  # fits: unchanged
    assert fit_to_positions([1, 2, 3], [4, 5], None) == ([1, 2, 3], [4, 5])
    assert fit_to_positions(list(range(10)), [20, 21], 6) == ([6, 7, 8, 9], [20, 21])  # the prompt's most recent tokens
    assert fit_to_positions(list(range(10)), list(range(20, 30)), 6) == ([7, 8, 9], [20, 21, 29])  # half each; the end token stays
    assert fit_to_positions([1], list(range(20, 30)), 6) == ([1], [20, 21, 22, 23, 29])  # a short prompt stays whole
    prompt, replies = fit_example(list(range(10)), [[20, 21], list(range(30, 40))], 6)
    assert prompt == [7, 8, 9] and replies == [[20, 21], [30, 31, 39]]  # every reply fits after the prompt
    assert prompt_room(512, 384, 128) == 384 and prompt_room(256, 384, 128) == 128 and prompt_room(None, 384, 128) == 384


def test_sft_on_demonstrations_longer_than_the_models_positions(tiny_policy_dir):
    """384 prompt + 256 reply tokens (the SFT defaults) exceed a 256-position model: the
    sequences are cut to fit instead of failing in the position embedding (IndexError)."""
    model, tokenizer = load_policy(tiny_policy_dir)
    limit = position_limit(model)
    assert limit == model.config.n_positions == 256
    long = [([{"role": "user", "content": sentence(rng, 400)}], sentence(rng, 300)) for _ in range(4)]
    config = SFTConfig(lr=1e-3, epochs=1, batch_size=2)
    uncut = build_sequences(tokenizer, long, config)
    assert all(len(ids) > limit for ids, _ in uncut)
    for (ids, labels), (full, full_labels) in zip(build_sequences(tokenizer, long, config, limit), uncut):
        reply = [t for t in labels if t != IGNORE]
        assert len(ids) == limit and len(reply) >= limit // 2
        prompt = ids[: len(ids) - len(reply)]
        full_prompt = full[: len(full) - sum(1 for t in full_labels if t != IGNORE)]
        full_reply = [t for t in full_labels if t != IGNORE]
        assert prompt == full_prompt[-len(prompt):] and reply == full_reply[: len(reply) - 1] + full_reply[-1:]
    metrics = train_sft(model, tokenizer, long, config, val_demonstrations=long)
    assert math.isfinite(metrics["val_loss"])


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


def padded_batch(tokenizer, n_new=7):
    """Left-padded prompts of different lengths and replies with padding after an EOS."""
    queries = [tokenizer(DEMOS[i][0][0]["content"])["input_ids"][: 4 + 3 * i] for i in range(3)]
    query, query_mask = pad_left(queries, tokenizer.pad_token_id)
    response = torch.randint(2, len(tokenizer), (3, n_new), generator=torch.Generator().manual_seed(0))
    response[0, 3] = tokenizer.eos_token_id
    response, response_mask, _ = truncate_after_eos(response, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return query, query_mask, response, response_mask


def test_reply_only_logits_equal_the_full_forward_sliced(tiny_policy_dir):
    model, tokenizer = load_policy(tiny_policy_dir)
    model.eval()
    query, query_mask, response, response_mask = padded_batch(tokenizer)
    ids, mask = torch.cat([query, response], 1), torch.cat([query_mask, response_mask], 1)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, query.shape[1] - 1 : -1]
        logprobs, logits = forward_response(model, query, query_mask, response, response_mask, 0.7)
    assert logits.shape == full.shape == (3, response.shape[1], len(tokenizer))
    assert torch.allclose(logits, full, atol=1e-5)
    assert torch.allclose(logprobs, logprobs_from_logits(full, response, 0.7), atol=1e-5)


def test_reply_only_logits_give_the_same_gradients(tiny_policy_dir):
    model, tokenizer = load_policy(tiny_policy_dir)
    query, query_mask, response, response_mask = padded_batch(tokenizer)
    ids, mask = torch.cat([query, response], 1), torch.cat([query_mask, response_mask], 1)
    full = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, query.shape[1] - 1 : -1]
    (logprobs_from_logits(full, response) * response_mask).sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    logprobs, _ = forward_response(model, query, query_mask, response, response_mask, 1.0)
    (logprobs * response_mask).sum().backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-5), name


def test_lean_sampler_greedy_equals_transformers_generate(tiny_policy_dir):
    model, tokenizer = load_policy(tiny_policy_dir)
    model.eval()
    query, query_mask, _, _ = padded_batch(tokenizer)
    config = SamplingConfig(temperature=0.0, max_new_tokens=9)
    response, mask, has_eos = sample_responses(model, tokenizer, query, query_mask, config)
    out = model.generate(
        input_ids=query, attention_mask=query_mask, do_sample=False, max_new_tokens=9,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    expected, expected_mask, expected_eos = truncate_after_eos(out[:, query.shape[1] :], tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert response.tolist() == expected.tolist() and mask.tolist() == expected_mask.tolist()
    assert has_eos.tolist() == expected_eos.tolist()


def test_sampled_replies_end_at_their_first_eos_and_follow_the_generators(tiny_policy_dir):
    model, tokenizer = load_policy(tiny_policy_dir)
    query, query_mask, _, _ = padded_batch(tokenizer)
    config = SamplingConfig(temperature=1.0, max_new_tokens=12)
    draws = [
        sample_responses(model, tokenizer, query, query_mask, config, generators=[torch.Generator().manual_seed(i) for i in range(3)])
        for _ in range(2)
    ]
    (response, mask, has_eos), (again, _, _) = draws
    assert response.tolist() == again.tolist()  # same generators, same replies
    for row, m, eos in zip(response.tolist(), mask.tolist(), has_eos.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n) and all(t == tokenizer.pad_token_id for t in row[n:])
        assert (tokenizer.eos_token_id in row[:n]) == eos and (not eos or row.index(tokenizer.eos_token_id) == n - 1)


def test_tensors_are_made_on_the_given_device():
    ids, mask = pad_left([[5, 6], [7]], pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    response = torch.tensor([[5, 2, 7]], device=ids.device)
    truncated, tmask, _ = truncate_after_eos(response, eos_id=2, pad_id=0)
    assert truncated.device == tmask.device == response.device


def test_draw_tokens_samples_the_distribution():
    """Inverse-CDF sampling: token frequencies match softmax(logits / T) after top-p; filtered tokens never come up."""
    from training.ml.sampling import draw_tokens

    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    n = 4000
    logits = probs.log().expand(n, 4)  # log 0 = -inf: probability 0
    tokens = draw_tokens(logits, 1.0, 1.0, [torch.Generator().manual_seed(i) for i in range(n)])
    frequencies = torch.bincount(tokens, minlength=4).float() / n
    assert torch.allclose(frequencies, probs, atol=0.03), frequencies  # binomial std <= 0.008 at n = 4000
    assert frequencies[3] == 0
    # top_p 0.7: the smallest set reaching 0.7 is {0.5, 0.3}; renormalised 0.625 / 0.375
    tokens = draw_tokens(logits, 1.0, 0.7, [torch.Generator().manual_seed(i) for i in range(n)])
    frequencies = torch.bincount(tokens, minlength=4).float() / n
    assert frequencies[2] == 0 and frequencies[3] == 0
    assert frequencies[0].item() == pytest.approx(0.625, abs=0.03)
    # temperature 2 flattens: p ~ sqrt(0.5), sqrt(0.3), sqrt(0.2) = 0.4154, 0.3218, 0.2628 after normalising
    tokens = draw_tokens(logits, 2.0, 1.0, [torch.Generator().manual_seed(i) for i in range(n)])
    assert (torch.bincount(tokens, minlength=4).float() / n)[0].item() == pytest.approx(0.4154, abs=0.03)
    assert torch.equal(draw_tokens(logits[:3], 0.0, 1.0, []), torch.zeros(3, dtype=torch.long))  # greedy
    torch.manual_seed(0)  # generators=None: the global RNG, one batched draw
    frequencies = torch.bincount(draw_tokens(logits, 1.0, 1.0, None), minlength=4).float() / n
    assert torch.allclose(frequencies, probs, atol=0.03), frequencies
