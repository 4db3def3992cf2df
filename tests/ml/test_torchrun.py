"""Reward-model training and SFT under torchrun --nproc_per_node=2 (gloo on CPU) reach the
same validation result as one process: accuracy identical, losses within 0.1% (relative)."""

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from training.ml.synthetic import preference_judgements, sentence

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
