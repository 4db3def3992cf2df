"""RLOO and GRPO (training/ml/rloo.py): the advantages and losses on numbers worked out by
hand, the reward rising on a tiny random-init policy within a KL bound, exact resume, bad
configs, 2 torchrun processes against 1, and the shared-prompt fast paths (one prompt pass
per group: the same log-probs, gradients and replies as one pass per reply; the
inverse-CDF sampler draws the right distribution)."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.ml.adapters import AdapterConfig, prepare_model
from training.ml.checkpoint import load_policy
from training.ml.hooks import TrainerHooks, TrainingCancelled
from training.ml.rloo import (
    OnlineRLConfig,
    OnlineRLTrainer,
    grpo_advantages,
    group_advantages,
    online_rl_defaults_for,
    policy_loss,
    rloo_advantages,
    sample_generator,
    sequence_rewards,
)
from training.ml.synthetic import corpus

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[{"role": "user", "content": text}] for text in corpus(1, 50)]
KL_BOUND = 10.0  # nats per 16-token reply (k1 summed over tokens, mean over replies), beta 0.1; as PPO's test


@pytest.fixture(autouse=True)
def one_thread(two_threads):
    """One torch thread: a 64-wide model gains little from a second one, and on a shared
    2-core machine two spinning threads per process run several times slower."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


def letter_e_reward(prompts, texts):
    """A fixed reward the policy can climb: the share of 'e' characters in the reply."""
    return torch.tensor([10 * text.count("e") / (len(text) + 1) for text in texts])


def trainer(folder, steps, **overrides):
    torch.manual_seed(0)
    policy, tokenizer = load_policy(folder)
    ref_policy, _ = load_policy(folder)
    settings = dict(
        steps=steps, prompts_per_step=8, num_samples=4, minibatch_size=16, epochs=2, lr=1e-3,
        max_new_tokens=16, temperature=1.0, beta=0.1, missing_eos_penalty=None,
    )
    config = OnlineRLConfig(**{**settings, **overrides})
    return OnlineRLTrainer(policy, ref_policy, tokenizer, letter_e_reward, PROMPTS, config)


# --------------------------------------------------------------------------- advantages by hand


def test_rloo_advantages_by_hand():
    # group [0, 0, 0, 4]: the others' mean is 4/3 for each 0 and 0 for the 4
    #   A = 0 - 4/3 = -4/3 (three times), 4 - 0 = 4;   = k/(k-1) (R - mean) = 4/3 * ([0,0,0,4] - 1)
    # group [1, 2, 3, 6]: others' means (2+3+6)/3 = 11/3, (1+3+6)/3 = 10/3, (1+2+6)/3 = 3, (1+2+3)/3 = 2
    #   A = 1 - 11/3 = -8/3, 2 - 10/3 = -4/3, 3 - 3 = 0, 6 - 2 = 4
    rewards = torch.tensor([[0.0, 0.0, 0.0, 4.0], [1.0, 2.0, 3.0, 6.0]])
    expected = torch.tensor([[-4 / 3, -4 / 3, -4 / 3, 4.0], [-8 / 3, -4 / 3, 0.0, 4.0]])
    assert torch.allclose(rloo_advantages(rewards), expected)
    # k = 2: each reply's baseline is the other reply: A = (R1 - R2, R2 - R1)
    assert torch.allclose(rloo_advantages(torch.tensor([[5.0, 2.0]])), torch.tensor([[3.0, -3.0]]))
    assert torch.all(rloo_advantages(torch.full((1, 3), 7.0)) == 0)  # equal rewards: no signal


def test_grpo_advantages_by_hand():
    # group [0, 0, 0, 4]: mean 1, deviations -1, -1, -1, 3; unbiased variance (1+1+1+9)/3 = 4, std 2
    #   A = deviation / (2 + 1e-4) = -0.499975..., 1.499925...
    rewards = torch.tensor([[0.0, 0.0, 0.0, 4.0]])
    assert torch.allclose(grpo_advantages(rewards), torch.tensor([[-1.0, -1.0, -1.0, 3.0]]) / 2.0001)
    assert grpo_advantages(rewards)[0, 3].item() == pytest.approx(1.499925, abs=1e-6)
    # k = 2, [1, 3]: mean 2, deviations -1, 1, unbiased variance (1 + 1)/1 = 2, std sqrt(2)
    assert torch.allclose(grpo_advantages(torch.tensor([[1.0, 3.0]]), eps=0.0), torch.tensor([[-1.0, 1.0]]) / math.sqrt(2))
    # without scaling (Dr. GRPO): the deviations
    assert torch.allclose(grpo_advantages(rewards, scale=False), torch.tensor([[-1.0, -1.0, -1.0, 3.0]]))
    # a group of equal rewards: 0 / (0 + eps) = 0
    assert torch.all(grpo_advantages(torch.full((2, 4), 0.5)) == 0)
    config = OnlineRLConfig(algorithm="grpo", std_eps=0.5)  # std 2 + 0.5: deviations / 2.5
    assert torch.allclose(group_advantages(rewards, config), torch.tensor([[-0.4, -0.4, -0.4, 1.2]]))
    assert torch.allclose(group_advantages(rewards, OnlineRLConfig(algorithm="rloo")), rloo_advantages(rewards))


def test_rloo_puts_the_kl_in_the_sequence_reward():
    # reply 0: tokens log p - log q = 0.5, -0.25, (pad 9.0 is masked): KL 0.25; R = 1 - 0.1 * 0.25 = 0.975
    # reply 1: 0.125, 0.125, 0.25: KL 0.5; R = 2 - 0.1 * 0.5 = 1.95
    logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.75, -9.0], [-1.125, -1.125, -1.25]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    scores = torch.tensor([1.0, 2.0])
    rloo = OnlineRLConfig(algorithm="rloo", beta=0.1)
    assert torch.allclose(sequence_rewards(scores, logprobs, ref_logprobs, mask, rloo), torch.tensor([0.975, 1.95]))
    grpo = OnlineRLConfig(algorithm="grpo", beta=0.1)  # GRPO: the KL is a loss term, R = score
    assert torch.allclose(sequence_rewards(scores, logprobs, ref_logprobs, mask, grpo), scores)


# --------------------------------------------------------------------------- losses by hand

# Two replies, two token slots; reply 1's second slot is padding. Log ratios to the sampling
# policy: reply 0: 0 and log 1.5 (r = 1, 1.5); reply 1: log 0.5 (r = 0.5). A = (+1, -1), e = 0.2.
OLD = torch.tensor([[-1.0, -2.0], [-1.0, -3.0]])
NEW = OLD + torch.tensor([[0.0, math.log(1.5)], [math.log(0.5), 5.0]])
ADV = torch.tensor([1.0, -1.0])
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])


def test_token_loss_by_hand():
    # per token max(-A r, -A clip(r, 0.8, 1.2)):
    #   reply 0, r = 1:   max(-1, -1) = -1            (not clipped)
    #   reply 0, r = 1.5: max(-1.5, -1.2) = -1.2      (clipped)
    #   reply 1, r = 0.5: max(0.5, 0.8) = 0.8         (clipped)
    # token: (-1 - 1.2 + 0.8) / 3 tokens = -1.4 / 3
    loss, stats = policy_loss(NEW, OLD, ADV, MASK, 0.2, "token")
    assert loss.item() == pytest.approx(-1.4 / 3)
    assert stats["clipped"].item() == 2 and stats["clip_units"].item() == 3
    # approx_kl: 0.5 (log r)^2 summed over real tokens = 0.5 (log 1.5)^2 + 0.5 (log 0.5)^2
    assert stats["approx_kl"].item() == pytest.approx(0.5 * math.log(1.5) ** 2 + 0.5 * math.log(0.5) ** 2)
    # sequence_mean: reply means (-1 - 1.2) / 2 = -1.1 and 0.8, then their mean (-1.1 + 0.8) / 2 = -0.15
    loss, _ = policy_loss(NEW, OLD, ADV, MASK, 0.2, "sequence_mean")
    assert loss.item() == pytest.approx(-0.15)


def test_sequence_loss_by_hand():
    # one ratio per reply, exp of the summed log ratios: reply 0: exp(0 + log 1.5) = 1.5; reply 1: 0.5
    #   reply 0, A = +1: max(-1.5, -1.2) = -1.2;  reply 1, A = -1: max(0.5, 0.8) = 0.8
    #   mean over replies (-1.2 + 0.8) / 2 = -0.2; both replies clipped
    loss, stats = policy_loss(NEW, OLD, ADV, MASK, 0.2, "sequence")
    assert loss.item() == pytest.approx(-0.2)
    assert stats["clipped"].item() == 2 and stats["clip_units"].item() == 2
    # inside the clip range (e = 0.6): reply 0: -1.5, reply 1: max(0.5, 0.5) = 0.5; mean -0.5
    assert policy_loss(NEW, OLD, ADV, MASK, 0.6, "sequence")[0].item() == pytest.approx(-0.5)


def test_grpo_kl_term_by_hand():
    # k3 = exp(d) - 1 - d with d = log q - log p; ref = new + d with d = log 2 on reply 0's first
    # token, 0 elsewhere: k3 = 2 - 1 - log 2 = 0.306853 there, 0 elsewhere (padding masked)
    ref = NEW + torch.tensor([[math.log(2), 0.0], [0.0, 3.0]])
    k3 = 1 - math.log(2)
    loss, stats = policy_loss(NEW, OLD, ADV, MASK, 0.2, "token", ref_logprobs=ref, beta=0.1)
    assert loss.item() == pytest.approx((-1.4 + 0.1 * k3) / 3)  # added per token, same reduction
    assert stats["k3"].item() == pytest.approx(k3)
    loss, _ = policy_loss(NEW, OLD, ADV, MASK, 0.2, "sequence_mean", ref_logprobs=ref, beta=0.1)
    assert loss.item() == pytest.approx((((-1.0 + 0.1 * k3) - 1.2) / 2 + 0.8) / 2)
    loss, _ = policy_loss(NEW, OLD, ADV, MASK, 0.2, "sequence", ref_logprobs=ref, beta=0.1)
    assert loss.item() == pytest.approx((-1.2 + 0.1 * k3 + 0.8) / 2)  # the reply's summed KL
    # beta 0: the reference changes nothing (RLOO passes beta 0: its KL is in the reward)
    assert policy_loss(NEW, OLD, ADV, MASK, 0.2, "token", ref_logprobs=ref, beta=0.0)[0].item() == pytest.approx(-1.4 / 3)


def test_loss_gradients_at_ratio_one():
    # at new = old every ratio is 1 (inside the clip range), so the gradient w.r.t. log p is:
    #   sequence: -A_i / B for every real token (REINFORCE on the reply's summed log-prob)
    #   token:    -A_i / (all tokens) = -A_i / 3
    for loss_type, expected in (("sequence", -ADV.unsqueeze(1) / 2), ("token", -ADV.unsqueeze(1) / 3)):
        new = OLD.clone().requires_grad_(True)
        policy_loss(new, OLD, ADV, MASK, 0.2, loss_type)[0].backward()
        assert torch.allclose(new.grad, expected * MASK), loss_type


@pytest.mark.parametrize("loss_type", ["sequence", "token", "sequence_mean"])
def test_split_with_a_global_denominator_sums_to_the_whole(loss_type):
    # what every rank does under torchrun: its rows' loss over the minibatch's global count
    denominator = 3.0 if loss_type == "token" else 2.0
    whole, _ = policy_loss(NEW, OLD, ADV, MASK, 0.2, loss_type)
    parts = [policy_loss(NEW[i : i + 1], OLD[i : i + 1], ADV[i : i + 1], MASK[i : i + 1], 0.2, loss_type, denominator)[0] for i in (0, 1)]
    assert (parts[0] + parts[1]).item() == pytest.approx(whole.item())


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("bad, message", [
    ({"algorithm": "ppo"}, "algorithm must be one of rloo, grpo"),
    ({"num_samples": 1}, "num_samples"),
    ({"prompts_per_step": 3, "num_samples": 2, "minibatch_size": 4}, "minibatch_size 4 must divide the 6 replies"),
    ({"clip_range": 0}, "clip_range must be a number > 0"),
    ({"beta": -0.1}, "beta"),
    ({"top_p": 1.5}, "top_p"),
    ({"temperature": 0.0}, "temperature"),
    ({"epochs": 0}, "epochs"),
    ({"loss_type": "mean"}, "loss_type must be one of"),
    ({"steps": 2.5}, "steps"),
])
def test_bad_config_raises(bad, message):
    with pytest.raises(ValueError, match=message):
        OnlineRLConfig(**bad)


def test_config_defaults():
    assert OnlineRLConfig(algorithm="rloo").loss_type == "sequence"
    assert OnlineRLConfig(algorithm="grpo").loss_type == "token"
    for device in ("cpu", "cuda"):
        sizes = online_rl_defaults_for(torch.device(device))
        OnlineRLConfig(**sizes)  # valid as they are
    cpu = online_rl_defaults_for(torch.device("cpu"))
    assert cpu["prompts_per_step"] * cpu["num_samples"] * cpu["max_new_tokens"] <= 1024  # a quick demo step


def test_trainer_needs_a_reference_and_prompts(tiny_policy_dir):
    policy, tokenizer = load_policy(tiny_policy_dir)
    with pytest.raises(ValueError, match="reference"):
        OnlineRLTrainer(policy, None, tokenizer, letter_e_reward, PROMPTS, OnlineRLConfig())
    with pytest.raises(ValueError, match="prompt"):
        OnlineRLTrainer(policy, load_policy(tiny_policy_dir)[0], tokenizer, letter_e_reward, [], OnlineRLConfig())


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_reward_rises_within_a_kl_bound(tiny_policy_dir, algorithm):
    run = trainer(tiny_policy_dir, steps=25, algorithm=algorithm)
    reports = []
    run.hooks = TrainerHooks(on_progress=reports.append)
    run.train()
    rewards = [h["reward_mean"] for h in run.history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(algorithm, "reward", round(first, 3), "->", round(last, 3), "max KL", round(max(h["kl"] for h in run.history), 3))
    assert last > first + 0.3, rewards
    assert max(h["kl"] for h in run.history) < KL_BOUND
    assert run.history[-1]["kl"] > 0  # the policy moved away from the reference
    assert [r["step"] for r in reports] == list(range(1, 26)) and reports[-1]["fraction"] == 1.0
    for key in ("reward_std", "advantage_mean", "advantage_std", "kl_k3", "clipfrac", "entropy", "response_length", "eos_rate",
                "policy_loss", "lr", "step_seconds", "generated_tokens_per_second", "zero_std_groups", "rlhf_reward_mean"):
        assert run.history[-1][key] is not None, key
    assert abs(run.history[-1]["advantage_mean"]) < 1e-5  # group baselines: advantages sum to 0 in every group
    assert run.history[-1]["entropy"] < run.history[0]["entropy"]


def test_bf16_autocast_runs(tiny_policy_dir):
    """bf16 autocast on the CPU (run config "bf16": true): forward passes in bf16, loss in float32."""
    run = trainer(tiny_policy_dir, steps=2, algorithm="grpo", bf16=True)
    run.train()
    assert run.bf16 and all(math.isfinite(h["policy_loss"]) for h in run.history)
    assert all(p.dtype == torch.float32 for p in run.policy.parameters())


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_resume_from_a_mid_run_checkpoint_continues_exactly(tiny_policy_dir, tmp_path, algorithm):
    straight = trainer(tiny_policy_dir, steps=5, algorithm=algorithm)
    straight.train()

    first_half = trainer(tiny_policy_dir, steps=2, algorithm=algorithm)
    state_path = tmp_path / "rl-state.pt"
    first_half.train(checkpoint_path=state_path, checkpoint_every=2)  # written after step 2
    del first_half

    resumed = trainer(tiny_policy_dir, steps=5, algorithm=algorithm)
    torch.manual_seed(12345)  # whatever happens in between, the state restores the RNG
    resumed.load_state_dict(torch.load(state_path, weights_only=False))
    assert resumed.step_count == 2
    resumed.train()
    assert len(resumed.history) == len(straight.history) == 5
    for a, b in zip(straight.history, resumed.history):
        for key in ("reward_mean", "kl", "kl_k3", "policy_loss", "clipfrac", "entropy", "response_length"):
            assert a[key] == b[key], (a["step"], key)
    for name, tensor in straight.policy.state_dict().items():
        assert torch.equal(tensor, resumed.policy.state_dict()[name]), name
    assert torch.load(state_path, weights_only=False)["config"]["algorithm"] == algorithm


def test_reusing_the_first_minibatch_forward_changes_nothing(tiny_policy_dir):
    reused = trainer(tiny_policy_dir, steps=1, algorithm="grpo")
    reused.step()
    fresh = trainer(tiny_policy_dir, steps=1, algorithm="grpo")
    rollout = fresh.rollout
    fresh.rollout = lambda first_minibatch=None: rollout(None)  # every minibatch runs its own forward
    fresh.step()
    assert reused.history[0]["policy_loss"] == pytest.approx(fresh.history[0]["policy_loss"], abs=1e-6)
    for name, tensor in reused.policy.state_dict().items():
        assert torch.allclose(tensor, fresh.policy.state_dict()[name], atol=1e-6), name


def test_groups_and_replies_do_not_depend_on_the_rank_layout(tiny_policy_dir):
    """Rank 1 of 2 holds the odd prompt rows, each with its k replies, sampled exactly as one process samples them."""
    one = trainer(tiny_policy_dir, steps=1, prompts_per_step=4, minibatch_size=8)
    whole = one.rollout()
    two = trainer(tiny_policy_dir, steps=1, prompts_per_step=4, minibatch_size=8)
    two.rank, two.world = 1, 2
    half = two.rollout()
    assert whole.groups == [0, 1, 2, 3] and half.groups == [1, 3]
    assert half.rows == [4, 5, 6, 7, 12, 13, 14, 15]
    rows = torch.tensor(half.rows)
    width = min(whole.response.shape[1], half.response.shape[1])
    assert torch.equal(whole.response[rows][:, :width], half.response[:, :width])
    assert torch.equal(whole.scores[rows], half.scores)
    assert torch.allclose(whole.advantages[rows], half.advantages)  # computed within the group, on its rank
    a = sample_generator(0, 3, 1, 2, torch.device("cpu")).initial_seed()
    assert a == sample_generator(0, 3, 1, 2, torch.device("cpu")).initial_seed() != sample_generator(0, 3, 2, 1, torch.device("cpu")).initial_seed()


def test_missing_eos_gets_the_penalty(tiny_policy_dir):
    run = trainer(tiny_policy_dir, steps=1, missing_eos_penalty=-3.0, max_new_tokens=2)
    rollout = run.rollout()
    assert (~rollout.has_eos).any()
    assert torch.all(rollout.scores[~rollout.has_eos] == -3.0)
    assert torch.all(rollout.logprobs[rollout.mask == 0] == 0)  # nothing on padding


def test_cancel_between_steps(tiny_policy_dir):
    run = trainer(tiny_policy_dir, steps=5)
    run.hooks = TrainerHooks(should_stop=lambda: run.step_count >= 1)
    with pytest.raises(TrainingCancelled):
        run.train()
    assert run.step_count == 1


@pytest.mark.parametrize("checkpointing", [False, True], ids=["lora", "lora-gradient-checkpointing"])
def test_lora_policy_uses_itself_with_adapters_off_as_the_reference(tiny_policy_dir, checkpointing):
    """With gradient checkpointing (no KV cache in training) the forwards fall back to one pass per reply."""
    torch.manual_seed(0)
    policy, tokenizer = load_policy(tiny_policy_dir)
    policy = prepare_model(policy, AdapterConfig(lora_r=4, gradient_checkpointing=checkpointing), task="causal")
    config = OnlineRLConfig(steps=2, prompts_per_step=4, num_samples=2, minibatch_size=8, lr=1e-2, max_new_tokens=8, algorithm="grpo",
                            missing_eos_penalty=None)
    run = OnlineRLTrainer(policy, None, tokenizer, letter_e_reward, PROMPTS, config)
    trainable = sum(p.numel() for group in run.optimizer.param_groups for p in group["params"])
    assert trainable == sum(p.numel() for p in policy.parameters() if p.requires_grad) < sum(p.numel() for p in policy.parameters()) / 2
    run.train()
    assert run.history[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # LoRA's B starts at 0: policy = reference
    assert run.history[1]["kl"] != 0.0


# --------------------------------------------------------------------------- torchrun


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TORCHRUN_CONFIG = {
    "steps": 3, "prompts_per_step": 4, "num_samples": 3, "minibatch_size": 6, "epochs": 2, "max_new_tokens": 10, "lr": 1e-3,
    "beta": 0.1, "seed": 3, "missing_eos_penalty": None,  # with the penalty every 10-token reply of the random policy scores -1: no signal
}


def test_two_processes_match_one(tiny_policy_dir, tmp_path):
    """RLOO, then GRPO: 2 gloo processes (prompt rows 0, 2 and 1, 3, whole groups) against 1,
    with the same global batch.

    Tolerance: every logged quantity of every step within 1e-4 (absolute) or 0.1% (relative),
    the replies the same token for token and the final weights within 1e-4 (relative): the
    runs differ only in how floating-point sums are split over processes, never in the math."""
    configs = json.dumps([{**TORCHRUN_CONFIG, "algorithm": algorithm} for algorithm in ("rloo", "grpo")])
    worker = str(ROOT / "tests" / "ml" / "rloo_torchrun_worker.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"{nproc}.json"
        launcher = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        ]
        command = launcher + [worker, str(tiny_policy_dir), configs, str(out)]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results[nproc] = json.loads(out.read_text())
    compared = (
        "reward_mean", "reward_std", "group_reward_std", "zero_std_groups", "rlhf_reward_mean", "advantage_mean", "advantage_std",
        "advantage_abs_mean", "kl", "kl_k3", "policy_loss", "clipfrac", "approx_kl", "kl_k3_per_token", "entropy", "response_length", "eos_rate",
    )
    for algorithm, one_run, two_run in zip(("rloo", "grpo"), results[1], results[2]):
        single, double = one_run["history"], two_run["history"]
        assert len(single) == len(double) == 3
        assert one_run["replies"] == two_run["replies"], algorithm  # token for token
        for one, two in zip(single, double):
            for key in compared:
                assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-4), (algorithm, one["step"], key, one[key], two[key])
        assert all(h["advantage_abs_mean"] > 0.1 for h in single)  # a real learning signal, not float noise
        assert single[-1]["kl"] != 0.0
        for name, value in one_run["weights"].items():
            assert two_run["weights"][name] == pytest.approx(value, rel=1e-4), (algorithm, name)


# --------------------------------------------------------------------------- shared prompts


def test_group_forward_matches_the_plain_forward(tiny_policy_dir):
    """Each prompt run once, its cache indexed out to the replies: the same log-probs and
    gradients as generation.forward_response on the repeated rows (within 1e-5)."""
    from training.ml.generation import forward_response, pad_left
    from training.ml.rloo import group_forward

    torch.manual_seed(0)
    policy, tokenizer = load_policy(tiny_policy_dir)
    query, query_mask = pad_left([[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]], tokenizer.pad_token_id)
    prompt_index = torch.tensor([2, 0, 2, 1, 0])  # any order, prompt 2 twice, prompt 1 once
    response = torch.randint(3, 500, (5, 6))
    response_mask = torch.ones_like(response)
    response_mask[1, 4:] = 0  # a reply ended early: padding after it
    response_mask[3, 1:] = 0
    shared, shared_logits = group_forward(policy, query, query_mask, prompt_index, response, response_mask, 0.7)
    (shared * response_mask).sum().backward()
    shared_grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad()
    plain, plain_logits = forward_response(policy, query[prompt_index], query_mask[prompt_index], response, response_mask, 0.7)
    (plain * response_mask).sum().backward()
    real = response_mask.bool()
    assert torch.allclose(shared[real], plain[real], atol=1e-5)
    assert torch.allclose(shared_logits[real], plain_logits[real], atol=1e-5)
    for name, p in policy.named_parameters():
        assert torch.allclose(shared_grads[name], p.grad, atol=1e-5, rtol=1e-4), name


def test_sample_groups_runs_each_prefill_once_with_the_same_replies(tiny_policy_dir):
    """k replies per prompt from one prefill each, against every reply's own prefill (k = 1 on the repeated prompts)."""
    from training.ml.generation import pad_left
    from training.ml.rloo import sample_groups

    policy, tokenizer = load_policy(tiny_policy_dir)
    query, query_mask = pad_left([[5, 6, 7], [8, 9, 10, 11]], tokenizer.pad_token_id)
    settings = dict(temperature=1.0, top_p=0.9, max_new_tokens=12, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    def generators():
        return [sample_generator(0, 0, g, j, torch.device("cpu")) for g in range(2) for j in range(3)]

    grouped = sample_groups(policy, query, query_mask, 3, generators=generators(), **settings)
    one_each = sample_groups(policy, query.repeat_interleave(3, 0), query_mask.repeat_interleave(3, 0), 1, generators=generators(), **settings)
    assert torch.equal(grouped, one_each)
    assert not torch.equal(grouped[0], grouped[1])  # k different replies to one prompt
    assert torch.equal(grouped, sample_groups(policy, query, query_mask, 3, generators=generators(), **settings))  # seeded
