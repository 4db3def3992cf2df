"""Reward-model training, SFT and PPO under torchrun --nproc_per_node=2 (gloo on CPU) give the
same result as one process with the same global batch.

Tolerances: reward model and SFT, accuracy identical and losses within 0.1% (relative).
PPO, every logged quantity of every step within 1e-4 (absolute) or 0.1% (relative), and the
replies identical: the two runs differ only in how floating-point sums are split over
processes (batch shapes, padding and all-reduce order), never in the math."""

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.ml.reward_model import RewardModel
from training.ml.synthetic import corpus, preference_judgements, sentence

ROOT = Path(__file__).resolve().parents[2]
REWARD_CONFIG = json.dumps({"lr": 1e-3, "epochs": 3, "batch_size": 16, "seed": 0})
SFT_CONFIG = json.dumps({"lr": 2e-3, "epochs": 2, "batch_size": 8, "seed": 0})


def raw_export(path: Path) -> None:
    with path.open("w") as f:
        for judgement in preference_judgements(480, seed=4):
            f.write(json.dumps({
                "prompt_id": judgement.prompt_id,
                "prompt": judgement.messages,
                "responses": [{"id": rid, "text": text} for rid, text in judgement.replies.items()],
                "ranking": judgement.ranking,
                "choice": judgement.choice,
                "strength": judgement.strength,
            }) + "\n")


def demonstrations(path: Path) -> None:
    rng = random.Random(2)
    with path.open("w") as f:
        for _ in range(64):
            f.write(json.dumps({"messages": [{"role": "user", "content": sentence(rng, 8)}], "reply": "certainly " + sentence(rng, 6, good=1)}) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], nproc: int, metrics: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        command = [sys.executable, "-m", "training.ml.cli", "--threads", "1"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "training.ml.cli", "--threads", "1"]
    result = subprocess.run(command + args + ["--metrics-out", str(metrics)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(metrics.read_text())


@pytest.mark.parametrize("kind", ["reward", "sft"])
def test_two_processes_match_one(kind, tiny_policy_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    if kind == "reward":
        raw_export(data)
        args = ["reward", "--data", str(data), "--backbone", str(tiny_policy_dir), "--config", REWARD_CONFIG, "--val-fraction", "0.25"]
    else:
        demonstrations(data)
        args = ["sft", "--data", str(data), "--policy", str(tiny_policy_dir), "--config", SFT_CONFIG, "--val-fraction", "0.25"]
    single = run(args + ["--out", str(tmp_path / "one")], 1, tmp_path / "one.json")
    double = run(args + ["--out", str(tmp_path / "two")], 2, tmp_path / "two.json")
    print(kind, "one process:", {k: single[k] for k in single if k.startswith("val")}, "two:", {k: double[k] for k in double if k.startswith("val")})
    assert single["steps"] == double["steps"]
    assert double["val_loss"] == pytest.approx(single["val_loss"], rel=1e-3)
    if kind == "reward":
        assert double["val_accuracy"] == single["val_accuracy"]
        assert single["val_accuracy"] > 0.8
        assert (tmp_path / "two" / "reward_model.json").exists()
    else:
        assert (tmp_path / "two" / "config.json").exists()


PPO_CONFIG = json.dumps({
    "steps": 3, "rollout_batch_size": 8, "minibatch_size": 4, "ppo_epochs": 2, "max_new_tokens": 12, "lr": 1e-3, "value_lr": 1e-3,
    "temperature": 1.0, "kl_coef": 0.1, "whiten_rewards": True, "kl_target": 1.0, "kl_horizon": 100, "seed": 3,
})


def test_ppo_two_processes_match_one(tiny_policy_dir, tmp_path):
    torch.manual_seed(0)
    reward_model, tokenizer = RewardModel.from_backbone(tiny_policy_dir)
    reward_model.save_pretrained(tmp_path / "reward", tokenizer)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in corpus(5, 20)))
    args = ["ppo", "--policy", str(tiny_policy_dir), "--reward-model", str(tmp_path / "reward"), "--prompts", str(prompts), "--config", PPO_CONFIG]
    single = run(args + ["--out", str(tmp_path / "one")], 1, tmp_path / "one.json")["history"]
    double = run(args + ["--out", str(tmp_path / "two")], 2, tmp_path / "two.json")["history"]
    assert len(single) == len(double) == 3
    compared = ("reward_mean", "reward_std", "kl", "kl_k3", "kl_coef", "policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy",
                "explained_variance", "response_length", "eos_rate", "non_score_reward")
    for one, two in zip(single, double):
        assert one["response_length"] == two["response_length"]  # the same replies were sampled
        for key in compared:
            assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-4), (one["step"], key, one[key], two[key])
    assert single[-1]["kl"] != 0.0  # the policy moved away from the reference
    assert (tmp_path / "two" / "config.json").exists()
