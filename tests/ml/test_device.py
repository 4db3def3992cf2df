"""The device setting, and every trainer on a GPU (tests marked `gpu` skip loudly without one).

On a GPU each trainer must keep every model and batch on it: a tensor left on the CPU makes
torch raise ("Expected all tensors to be on the same device"), so these runs fail if any
path was missed. bf16 autocast is on by default there; weights stay float32.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.ml import device as devices
from training.ml.checkpoint import load_policy
from training.ml.data import build_examples, split_by_prompt
from training.ml.generation import SamplingConfig, generate
from training.ml.ppo import PPOConfig, PPOTrainer, ValueModel, ppo_defaults_for
from training.ml.reward import RewardTrainingConfig, train_reward_model
from training.ml.reward_model import RewardModel, RewardScorer
from training.ml.sft import SFTConfig, train_sft
from training.ml.synthetic import corpus, preference_judgements

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", " CPU "])
def test_valid_device_settings_parse(spec):
    assert devices.parse_device(spec) == spec.strip().lower()


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "tpu", "cuda:-1", "mps"])
def test_invalid_device_settings_are_refused_with_the_choices(spec):
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        devices.parse_device(spec)


def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused_clearly():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert devices.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no usable CUDA GPU"):
        devices.resolve_device("cuda:0")
    assert not devices.use_bf16(torch.device("cpu"))  # float32 on CPU unless asked
    assert devices.use_bf16(torch.device("cpu"), True)


@pytest.mark.parametrize("name, value, message", [
    ("TRAINING_DEVICE", "gpu0", "TRAINING_DEVICE must be auto, cpu, cuda or cuda:N"),
    ("TRAINING_PROCESSES", "two", "TRAINING_PROCESSES must be a whole number from 1 to 64, not 'two'"),
    ("TRAINING_PROCESSES", "0", "TRAINING_PROCESSES must be a whole number from 1 to 64"),
])
def test_a_bad_training_setting_stops_the_process_at_start_with_the_reason(name, value, message):
    env = {**os.environ, name: value, "DJANGO_SETTINGS_MODULE": "feedback_site.settings"}
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and message in result.stderr


def test_to_device_moves_nested_batches():
    from training.ml.reward_model import RewardBatch

    batch = RewardBatch.build([[1, 2]], [[3], [4, 5]], [0, 0], pad_id=0)
    moved = devices.to_device({"batch": batch, "ids": [torch.ones(2)]}, torch.device("cpu"))
    assert isinstance(moved["batch"], RewardBatch) and torch.equal(moved["batch"].reply_ids, batch.reply_ids)


def test_cpu_bf16_autocast_runs_attention_in_float32(tiny_policy_dir, monkeypatch):
    """Under our bf16 autocast on a CPU every attention call (transformers' sdpa, and the
    PPO tail's own) gets float32 inputs, the linear layers stay bf16, and the logits stay
    close to float32's; outside autocast a bf16 model keeps bf16 attention."""
    from training.ml.tail import last_layer_tail

    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype))
        return original(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model, tokenizer = load_policy(tiny_policy_dir)
    model.eval()
    ids = torch.tensor([tokenizer.encode("the cat sat on the mat and the dog ran")])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        seen.clear()
        with devices.autocast(torch.device("cpu"), True):
            logits = model(input_ids=ids).logits
            assert seen and all(dtypes == (torch.float32,) * 3 for dtypes in seen), seen
            seen.clear()
            with last_layer_tail(model, 3) as applied:
                tail = model(input_ids=ids).logits[:, -3:]
            assert applied and seen and all(dtypes == (torch.float32,) * 3 for dtypes in seen), seen
        assert logits.dtype == torch.bfloat16  # the matmuls (lm head) still run in bf16
        assert torch.allclose(logits.float(), expected, atol=0.1), (logits.float() - expected).abs().max()
        assert torch.allclose(tail.float(), logits[:, -3:].float(), atol=0.1)
        seen.clear()
        model.to(torch.bfloat16)(input_ids=ids)  # bf16 weights, no autocast: left alone
        assert seen and all(dtypes == (torch.bfloat16,) * 3 for dtypes in seen), seen


def test_ppo_defaults_are_sized_to_the_device():
    cpu, gpu = ppo_defaults_for(torch.device("cpu")), ppo_defaults_for(torch.device("cuda", 0))
    assert cpu["rollout_batch_size"] < gpu["rollout_batch_size"] and cpu["steps"] < gpu["steps"]
    PPOConfig(**cpu), PPOConfig(**gpu)  # both are valid configs


# --------------------------------------------------------------------------- on a GPU


@pytest.fixture
def cuda():
    return devices.prepare(devices.resolve_device("cuda"))


@pytest.mark.gpu
def test_reward_training_runs_on_the_gpu_in_bf16(tiny_policy_dir, cuda):
    torch.manual_seed(0)
    model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    model.to(cuda)
    train, val = split_by_prompt(build_examples(preference_judgements(300, seed=1)), 0.2)
    metrics = train_reward_model(model, tokenizer, train, val, RewardTrainingConfig(lr=1e-3, epochs=3, batch_size=16))
    assert metrics["val_accuracy"] > 0.9
    assert next(model.parameters()).device.type == "cuda" and next(model.parameters()).dtype == torch.float32
    scores = RewardScorer(model, tokenizer)([[{"role": "user", "content": "hi"}]] * 2, ["helpful clear", "river stone"])
    assert scores.device.type == "cuda" and scores.shape == (2,)


@pytest.mark.gpu
def test_sft_and_generation_run_on_the_gpu(tiny_policy_dir, cuda):
    policy, tokenizer = load_policy(tiny_policy_dir)
    policy.to(cuda)
    demos = [([{"role": "user", "content": text}], "helpful clear answer") for text in corpus(3, 32)]
    metrics = train_sft(policy, tokenizer, demos, SFTConfig(lr=1e-3, epochs=2, batch_size=8))
    assert metrics["train_loss"] < 10
    samples = generate(policy, tokenizer, [m for m, _ in demos[:4]], SamplingConfig(n=2, max_new_tokens=8))
    assert len(samples) == 4 and all(len(s) == 2 for s in samples)


@pytest.mark.gpu
def test_a_ppo_step_keeps_policy_reference_value_and_reward_models_on_the_gpu(tiny_policy_dir, cuda):
    policy, tokenizer = load_policy(tiny_policy_dir)
    reference, _ = load_policy(tiny_policy_dir)
    value_model = ValueModel.from_policy_folder(tiny_policy_dir)
    reward_model, reward_tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    for model in (policy, reference, value_model, reward_model):
        model.to(cuda)
    prompts = [[{"role": "user", "content": text}] for text in corpus(2, 16)]
    config = PPOConfig(steps=2, rollout_batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=8, lr=1e-4)
    trainer = PPOTrainer(policy, reference, value_model, tokenizer, RewardScorer(reward_model, reward_tokenizer), prompts, config)
    assert trainer.bf16  # autocast by default on a bf16-capable GPU
    metrics = trainer.train()
    assert metrics["response_length"] > 0 and metrics["kl"] is not None
    assert all(p.device.type == "cuda" for p in policy.parameters())


@pytest.mark.gpu
def test_dpo_runs_on_the_gpu_in_bf16(tiny_policy_dir, cuda):
    """#11: DPO keeps the policy, its batches and the reference log-probs on the GPU."""
    from training.ml.dpo import DPOConfig, DPOTrainer

    policy, tokenizer = load_policy(tiny_policy_dir)
    policy.to(cuda)
    train, val = split_by_prompt(build_examples(preference_judgements(64, seed=3)), 0.25, seed=0)
    trainer = DPOTrainer(policy, tokenizer, train, DPOConfig(steps=3, batch_size=8, lr=1e-4), eval_examples=val)
    assert trainer.bf16
    metrics = trainer.train()
    assert metrics["val_pairs"] > 0 and all(p.device.type == "cuda" and p.dtype == torch.float32 for p in policy.parameters())


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_rloo_and_grpo_steps_keep_policy_reference_and_reward_models_on_the_gpu(tiny_policy_dir, cuda, algorithm):
    from training.ml.rloo import OnlineRLConfig, OnlineRLTrainer

    policy, tokenizer = load_policy(tiny_policy_dir)
    reference, _ = load_policy(tiny_policy_dir)
    reward_model, reward_tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    for model in (policy, reference, reward_model):
        model.to(cuda)
    prompts = [[{"role": "user", "content": text}] for text in corpus(2, 16)]
    config = OnlineRLConfig(algorithm=algorithm, steps=2, prompts_per_step=4, num_samples=2, minibatch_size=4, max_new_tokens=8, lr=1e-4)
    trainer = OnlineRLTrainer(policy, reference, tokenizer, RewardScorer(reward_model, reward_tokenizer), prompts, config)
    assert trainer.bf16
    metrics = trainer.train()
    assert metrics["response_length"] > 0 and metrics["kl"] is not None
    assert all(p.device.type == "cuda" for p in policy.parameters())
