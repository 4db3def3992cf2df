"""Reward-model training and PPO steps on a GPU: throughput and the share of the bf16 peak (MFU).

Two random-init model sizes, built locally (no hub): GPT-2 124M (12 layers, width 768,
vocab 50,304) and a Qwen2-0.5B-shaped model (24 layers, width 896, 14 heads / 2 KV heads,
MLP 4,864, vocab 151,936). Training runs as the product runs it on a GPU: float32 weights
and optimiser, bf16 autocast, TF32 matmuls. Prints one JSON line per measurement:

- reward: pairs/s, tokens/s, MFU (6 N + 12 L d T FLOPs per trained token, PaLM's formula);
- ppo: s/step, generated tokens/s while sampling, and the step's MFU (2 N per token for each
  forward pass of the rollout: sampling, policy, reference, value, reward; 6 N per token
  for each update pass of policy and value);
- the same reward figures for TRL's RewardTrainer on the same model and data, when
  --trl-python names an interpreter with TRL (bench/trl_rm_bench.py in its own venv).

The peak is the device's nominal dense bf16 figure when known (H100 / H200 SXM 989
TFLOP/s, A100 312, L4 121), and a measured large bf16 matmul otherwise; both are printed.

    python bench/gpu_bench.py                      # on a GPU, both sizes
    python bench/gpu_bench.py --sizes gpt2-124m --trl-python /tmp/trl-venv/bin/python
    python bench/gpu_bench.py --tiny               # the same code on CPU at a tiny size
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from training.ml.bootstrap import save_new_model, train_bpe_tokenizer  # noqa: E402
from training.ml.checkpoint import load_policy  # noqa: E402
from training.ml.data import build_examples, split_by_prompt  # noqa: E402
from training.ml.device import describe, free_memory, prepare, resolve_device  # noqa: E402
from training.ml.ppo import PPOConfig, PPOTrainer, ValueModel, ppo_defaults_for  # noqa: E402
from training.ml.reward import RewardTrainingConfig, train_reward_model  # noqa: E402
from training.ml.reward_model import RewardModel, RewardScorer  # noqa: E402
from training.ml.synthetic import corpus, preference_judgements, sentence  # noqa: E402
from training.ml.text import render_prompt, render_reply  # noqa: E402

NOMINAL_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def model_sizes(tiny: bool) -> dict:
    if tiny:
        # a vocabulary larger than the tokenizer's, as in the real sizes (sampled ids past it decode to nothing)
        return {"tiny": lambda vocab: GPT2LMHeadModel(GPT2Config(vocab_size=2 * vocab, n_layer=2, n_embd=128, n_head=2, n_positions=512))}
    return {
        "gpt2-124m": lambda vocab: GPT2LMHeadModel(GPT2Config(vocab_size=50304, n_layer=12, n_embd=768, n_head=12, n_positions=1024)),
        "qwen2-0.5b": lambda vocab: Qwen2ForCausalLM(Qwen2Config(
            vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        )),
    }


def peak_flops(device: torch.device) -> tuple[float, float | None]:
    """(measured bf16 matmul FLOP/s, the nominal dense bf16 peak or None)."""
    size, repeats = (8192, 20) if device.type == "cuda" else (1024, 10)
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    measured = 2 * size**3 * repeats / (time.perf_counter() - started)
    nominal = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        nominal = next((peak for key, peak in NOMINAL_BF16_PEAK.items() if key in name), None)
    return measured, nominal


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def weights_without_embeddings(model) -> int:
    embeddings = {id(p) for module in model.modules() if isinstance(module, torch.nn.Embedding) for p in module.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def flops_per_token(model, context: float, backward: bool) -> float:
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    width = getattr(config, "hidden_size", None) or config.n_embd
    attention = 2 * layers * width * context  # QK^T and AV, forward, per token
    return (6 if backward else 2) * weights_without_embeddings(model) + (6 if backward else 2) * attention


def reward_bench(name: str, folder: Path, device, peaks, args) -> dict:
    judgements = preference_judgements(args.pairs, seed=1, prompt_words=(150, 260), reply_words=(30, 80))
    train, val = split_by_prompt(build_examples(judgements), 0.1, seed=0)
    torch.manual_seed(0)
    model, tokenizer = RewardModel.from_backbone(folder)
    model.to(device)
    config = RewardTrainingConfig(lr=1e-4, epochs=1, batch_size=args.batch_size, max_prompt_tokens=384, max_reply_tokens=128)
    metrics = train_reward_model(model, tokenizer, train, val, config)
    achieved = metrics["tokens_per_second"] * flops_per_token(model.backbone, 256, backward=True)
    result = {
        "bench": "reward", "trainer": "ours", "model": name, "device": describe(device), "bf16": device.type == "cuda",
        "pairs_per_second": round(metrics["pairs_per_second"], 1), "tokens_per_second": round(metrics["tokens_per_second"]),
        "mfu": round(achieved / (peaks[1] or peaks[0]), 4), "achieved_tflops": round(achieved / 1e12, 2),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }
    del model
    free_memory()
    if args.trl_python:
        dump = folder.parent / "trl-data"
        dump.mkdir(exist_ok=True)
        for split_name, split in (("train", train), ("val", val)):
            with (dump / f"{split_name}.jsonl").open("w") as f:
                for e in split:
                    better, worse, _ = e.pairs[0]
                    f.write(json.dumps({"prompt": render_prompt(e.messages), "chosen": render_reply(e.replies[better]), "rejected": render_reply(e.replies[worse])}) + "\n")
        (dump / "backbone").unlink(missing_ok=True)
        (dump / "backbone").symlink_to(folder)
        command = [args.trl_python, str(Path(__file__).parent / "trl_rm_bench.py"), "--data", str(dump), "--epochs", "1", "--batch-size", str(args.batch_size), "--lr", "1e-4"]
        if device.type == "cuda":
            command += ["--device", "cuda", "--bf16"]
        out = subprocess.run(command, capture_output=True, text=True)
        trl = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-500:]}
        result["trl"] = trl
    return result


def ppo_bench(name: str, folder: Path, device, peaks, args) -> dict:
    rng = random.Random(0)
    prompts = [[{"role": "user", "content": sentence(rng, rng.randint(40, 120))}] for _ in range(256)]
    policy, tokenizer = load_policy(folder)
    reference, _ = load_policy(folder)
    value_model = ValueModel.from_policy_folder(folder)
    reward_model, reward_tokenizer = RewardModel.from_backbone(folder)
    for model in (policy, reference, value_model, reward_model):
        model.to(device)
    sizes = ppo_defaults_for(device)
    config = PPOConfig(**{**sizes, "steps": args.ppo_steps + 1, "lr": 1e-5, "missing_eos_penalty": None, "temperature": 1.0})
    trainer = PPOTrainer(policy, reference, value_model, tokenizer, RewardScorer(reward_model, reward_tokenizer), prompts, config)
    trainer.step()  # warm-up: kernels, allocator
    synchronize(device)
    steps = [trainer.step() for _ in range(args.ppo_steps)]
    seconds = sum(m["step_seconds"] for m in steps) / len(steps)
    reply = sum(m["response_length"] for m in steps) / len(steps)
    prompt_tokens = 100 * 1.3  # ~ words to tokens of the synthetic prompts
    tokens = config.rollout_batch_size * (prompt_tokens + reply)
    context = (prompt_tokens + reply) / 2
    forward, train = flops_per_token(policy, context, backward=False), flops_per_token(policy, context, backward=True)
    # rollout: sampling + policy, reference, value, reward passes; update: policy + value per epoch
    step_flops = tokens * (5 * forward + config.ppo_epochs * 2 * train)
    result = {
        "bench": "ppo", "model": name, "device": describe(device), "bf16": trainer.bf16, "rollout_batch_size": config.rollout_batch_size,
        "max_new_tokens": config.max_new_tokens, "seconds_per_step": round(seconds, 3),
        "generated_tokens_per_second": round(sum(m["generated_tokens_per_second"] for m in steps) / len(steps)),
        "mean_reply_tokens": round(reply, 1), "mfu": round(step_flops / seconds / (peaks[1] or peaks[0]), 4),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }
    del trainer, policy, reference, value_model, reward_model
    free_memory()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer width-128 model on the CPU (checks the script, not a GPU)")
    parser.add_argument("--sizes", nargs="*", help="model sizes to run (default: all)")
    parser.add_argument("--pairs", type=int, default=0, help="preference pairs for the reward run (default 1024, tiny 96)")
    parser.add_argument("--batch-size", type=int, default=0, help="judgements per reward step (default 32, tiny 8)")
    parser.add_argument("--ppo-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trl-python", help="a Python with TRL installed: also run bench/trl_rm_bench.py on the same model and data")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = prepare(resolve_device("cpu" if args.tiny else "auto"))
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("no CUDA GPU here: run with --tiny to check the script on the CPU")
    args.pairs = args.pairs or (96 if args.tiny else 1024)
    args.batch_size = args.batch_size or (8 if args.tiny else 32)
    peaks = peak_flops(device)
    print(json.dumps({"device": describe(device), "measured_bf16_matmul_tflops": round(peaks[0] / 1e12, 2),
                      "nominal_bf16_tflops": peaks[1] and round(peaks[1] / 1e12), "torch": torch.__version__}), flush=True)
    tokenizer = train_bpe_tokenizer(corpus(0, 2000), 4096)
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    for name, build in model_sizes(args.tiny).items():
        if args.sizes and name not in args.sizes:
            continue
        torch.manual_seed(0)
        model = build(len(tokenizer))
        model.config.eos_token_id = model.config.bos_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        folder = work / name
        save_new_model(model, tokenizer, folder)
        del model
        print(json.dumps(reward_bench(name, folder, device, peaks, args)), flush=True)
        print(json.dumps(ppo_bench(name, folder, device, peaks, args)), flush=True)


if __name__ == "__main__":
    main()
