"""The equations against values worked out by hand."""

import math

import pytest
import torch

from training.ml.losses import (
    AdaptiveKLController,
    bradley_terry_loss,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    generalized_advantage_estimation,
    kl_k1,
    kl_k3,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    tie_loss,
    warmup_cosine,
)

t = torch.tensor


def test_bradley_terry():
    # -log sigmoid(1) = log(1 + e^-1)
    assert bradley_terry_loss(t(2.0), t(1.0)).item() == pytest.approx(math.log(1 + math.exp(-1)))
    # a margin equal to the difference leaves -log sigmoid(0) = log 2
    assert bradley_terry_loss(t(2.0), t(1.0), 1.0).item() == pytest.approx(math.log(2))
    # the wrong order costs more: -log sigmoid(-1) = log(1 + e)
    assert bradley_terry_loss(t(1.0), t(2.0)).item() == pytest.approx(math.log(1 + math.e))


def test_tie_loss_is_smallest_when_equal():
    assert tie_loss(t(0.3), t(0.3)).item() == pytest.approx(math.log(2))
    # 0.5 * (log(1 + e^-2) + log(1 + e^2))
    assert tie_loss(t(2.0), t(0.0)).item() == pytest.approx(0.5 * (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))))


def test_masked_statistics_and_whitening():
    x, mask = t([[1.0, 2.0, 3.0, 100.0]]), t([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_var(x, mask).item() == pytest.approx(1.0)  # ((-1)^2 + 0 + 1^2) / (3 - 1)
    assert masked_whiten(x, mask).tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert masked_whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


def test_gae_gamma_lambda_one():
    # delta_2 = 1 - .5 = .5, delta_1 = .5 - .5 = 0, delta_0 = 0: every advantage is .5, returns 1
    adv, ret = generalized_advantage_estimation(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.5, 0.5]]), torch.ones(1, 3), 1.0, 1.0)
    assert adv.tolist()[0] == pytest.approx([0.5, 0.5, 0.5])
    assert ret.tolist()[0] == pytest.approx([1.0, 1.0, 1.0])


def test_gae_discounted():
    # gamma .9, lambda .5: A2 = .5; d1 = .9*.5 - .5 = -.05, A1 = -.05 + .45*.5 = .175; A0 = -.05 + .45*.175 = .02875
    adv, _ = generalized_advantage_estimation(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.5, 0.5]]), torch.ones(1, 3), 0.9, 0.5)
    assert adv.tolist()[0] == pytest.approx([0.02875, 0.175, 0.5])


def test_gae_ignores_padding():
    # the padded third token's reward 5 and value 9 must not leak into the real tokens
    adv, ret = generalized_advantage_estimation(t([[0.0, 1.0, 5.0]]), t([[0.5, 0.5, 9.0]]), t([[1.0, 1.0, 0.0]]), 1.0, 1.0)
    assert adv.tolist()[0] == pytest.approx([0.5, 0.5, 0.0])
    assert ret.tolist()[0] == pytest.approx([1.0, 1.0, 0.0])


def test_kl_estimators():
    logp, ref = t([math.log(0.5)]), t([math.log(0.25)])
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    # r = q/p = 0.5: (r - 1) - log r = -0.5 + log 2
    assert kl_k3(logp, ref).item() == pytest.approx(-0.5 + math.log(2))
    assert kl_k3(ref, logp).item() >= 0


def test_logprobs_use_the_sampling_temperature():
    logits = t([[[0.0, math.log(3.0)]]])
    assert logprobs_from_logits(logits, t([[1]])).item() == pytest.approx(math.log(0.75))
    # logits / 2: p1 = sqrt(3) / (1 + sqrt(3))
    assert logprobs_from_logits(logits, t([[1]]), temperature=2.0).item() == pytest.approx(math.log(math.sqrt(3) / (1 + math.sqrt(3))))


def test_clipped_policy_loss():
    mask = torch.ones(1, 1)
    # ratio 1.5, A = +1: max(-1.5, -1.2) = -1.2, clipped
    loss, stats = clipped_policy_loss(t([[math.log(1.5)]]), t([[0.0]]), t([[1.0]]), mask, 0.2)
    assert loss.item() == pytest.approx(-1.2) and float(stats["clipfrac"]) == 1.0
    assert float(stats["approx_kl"]) == pytest.approx(0.5 * math.log(1.5) ** 2)
    # ratio 1.5, A = -1: max(1.5, 1.2) = 1.5, not clipped (pessimistic bound)
    loss, stats = clipped_policy_loss(t([[math.log(1.5)]]), t([[0.0]]), t([[-1.0]]), mask, 0.2)
    assert loss.item() == pytest.approx(1.5) and float(stats["clipfrac"]) == 0.0


def test_clipped_value_loss():
    # V_old 0, V 1, R 2, clip .2: V_clipped .2; 0.5 * max((1-2)^2, (.2-2)^2) = 0.5 * 3.24
    loss, stats = clipped_value_loss(t([[1.0]]), t([[0.0]]), t([[2.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(1.62) and float(stats["value_clipfrac"]) == 1.0


def test_explained_variance():
    targets, mask = t([[1.0, 2.0, 3.0]]), torch.ones(1, 3)
    assert explained_variance(targets, targets, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 3), 2.0), targets, mask) == pytest.approx(0.0)


def test_adaptive_kl_controller():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    controller.update(current_kl=12.0, n_steps=256)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))
    fixed = AdaptiveKLController(0.1, target=None, horizon=10_000)
    fixed.update(100.0, 256)
    assert fixed.value == 0.1


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 2) == pytest.approx(0.5)
    assert warmup_cosine(1, 10, 2) == pytest.approx(1.0)
    assert warmup_cosine(6, 10, 2) == pytest.approx(0.5)  # halfway through the cosine
    assert warmup_cosine(10, 10, 2) == pytest.approx(0.0)
