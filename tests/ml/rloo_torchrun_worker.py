"""Worker of tests/ml/test_rloo.py's torchrun test: RLOO / GRPO runs on a tiny policy.

    python tests/ml/rloo_torchrun_worker.py POLICY_DIR CONFIGS_JSON OUT_JSON
    python -m torch.distributed.run --nproc_per_node 2 tests/ml/rloo_torchrun_worker.py ...

CONFIGS_JSON is a list of OnlineRLConfig field dicts, run one after the other from the same
start (one process launch for all of them). Joins the process group when torchrun started
it (gloo, CPU), trains against the letter-e reward and (rank 0) writes, per run, the
trainer's history, every reply of every step (by global row) and a digest of the weights.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from training.ml import distributed  # noqa: E402
from training.ml.checkpoint import load_policy  # noqa: E402
from training.ml.rloo import OnlineRLConfig, OnlineRLTrainer  # noqa: E402
from training.ml.synthetic import corpus  # noqa: E402

PROMPTS = [[{"role": "user", "content": text}] for text in corpus(5, 20)]


def letter_e_reward(prompts, texts):
    return torch.tensor([10 * text.count("e") / (len(text) + 1) for text in texts])


def run(policy_dir: str, settings: dict) -> dict:
    torch.manual_seed(0)
    policy, tokenizer = load_policy(policy_dir)
    ref_policy, _ = load_policy(policy_dir)
    trainer = OnlineRLTrainer(policy, ref_policy, tokenizer, letter_e_reward, PROMPTS, OnlineRLConfig(**settings))
    replies: list[dict] = []  # per step: global reply row -> its tokens
    rollout = trainer.rollout

    def recording_rollout(first_minibatch=None):
        batch = rollout(first_minibatch)
        lengths = batch.mask.sum(1).long().tolist()
        mine = {row: batch.response[i, : lengths[i]].tolist() for i, row in enumerate(batch.rows)}
        replies.append({row: tokens for part in distributed.all_gather_objects(mine) for row, tokens in part.items()})
        return batch

    trainer.rollout = recording_rollout
    trainer.train()
    weights = {name: float(t.double().abs().sum()) for name, t in policy.state_dict().items() if t.is_floating_point()}
    return {"history": trainer.history, "weights": weights, "replies": [[step[row] for row in sorted(step)] for step in replies]}


def main(policy_dir: str, configs_json: str, out: str) -> None:
    torch.set_num_threads(1)
    distributed.init_from_env(backend="gloo")
    results = [run(policy_dir, settings) for settings in json.loads(configs_json)]
    if distributed.is_main_process():
        Path(out).write_text(json.dumps(results))
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
