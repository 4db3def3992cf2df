"""Reward-model training benchmark on a fixed small configuration.

GPT-2 style backbone, 4 layers, width 256, sequences up to 512 tokens (prompt up to 384,
reply up to 128), batch 8 judgements, 2 CPU threads, synthetic data with a known rule
(training/ml/synthetic.py). Prints pairs per second, tokens per second, peak memory,
validation accuracy, and the achieved FLOP/s against this machine's measured float32
matrix-multiply peak.

    python bench/rm_bench.py                     # our trainer (shared prefix on)
    python bench/rm_bench.py --no-shared-prefix  # the same trainer, prompt + reply concatenated
    python bench/rm_bench.py --dump DIR          # also write the model folder and data for bench/trl_rm_bench.py
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from training.ml.bootstrap import DefaultModelConfig, new_policy, save_new_model, train_bpe_tokenizer  # noqa: E402
from training.ml.data import build_examples, split_by_prompt  # noqa: E402
from training.ml.reward import RewardTrainingConfig, train_reward_model  # noqa: E402
from training.ml.reward_model import RewardModel  # noqa: E402
from training.ml.synthetic import corpus, preference_judgements  # noqa: E402
from training.ml.text import render_prompt, render_reply  # noqa: E402

CONFIG = DefaultModelConfig(vocab_size=4096, n_layer=4, n_embd=256, n_head=4, n_positions=512)


def matmul_peak_flops(threads: int, dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 20) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def training_flops_per_token(model: RewardModel, context: int) -> float:
    """6 N (weights, forward + backward) + 12 L d context (attention scores), per token (Kaplan / PaLM)."""
    config = model.backbone.config
    n_params = sum(p.numel() for name, p in model.named_parameters() if "wte" not in name and "wpe" not in name)
    return 6 * n_params + 12 * config.n_layer * config.n_embd * context


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--judgements", type=int, default=480)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--no-shared-prefix", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (the matmul peak is then measured in bf16 too)")
    parser.add_argument("--dump", help="write the backbone folder and train / val data here (for the TRL comparison)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak_flops(args.threads, torch.bfloat16 if args.bf16 else torch.float32)

    judgements = preference_judgements(args.judgements, seed=1, prompt_words=(150, 260), reply_words=(30, 80))
    tokenizer = train_bpe_tokenizer(corpus(0, 2000), CONFIG.vocab_size)
    workdir = Path(args.dump) if args.dump else Path(tempfile.mkdtemp())
    backbone_dir = workdir / "backbone"
    if backbone_dir.exists():
        shutil.rmtree(backbone_dir)
    save_new_model(new_policy(tokenizer, CONFIG), tokenizer, backbone_dir)
    train, val = split_by_prompt(build_examples(judgements), 0.2, seed=0)
    if args.dump:
        for name, split in (("train", train), ("val", val)):
            with (workdir / f"{name}.jsonl").open("w") as f:
                for e in split:
                    better, worse, _ = e.pairs[0]
                    prompt = render_prompt(e.messages)
                    f.write(json.dumps({"prompt": prompt, "chosen": render_reply(e.replies[better]), "rejected": render_reply(e.replies[worse])}) + "\n")

    torch.manual_seed(0)
    model, tokenizer = RewardModel.from_backbone(backbone_dir, shared_prefix=not args.no_shared_prefix)
    config = RewardTrainingConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, max_prompt_tokens=384, max_reply_tokens=128, bf16=args.bf16, seed=0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics = train_reward_model(model, tokenizer, train, val, config)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mean_context = 512 / 2  # average attention span over a sequence of up to 512 tokens
    achieved = metrics["tokens_per_second"] * training_flops_per_token(model, mean_context)
    print(json.dumps({
        "trainer": "ours",
        "shared_prefix": metrics["shared_prefix"],
        "bf16": args.bf16,
        "threads": args.threads,
        "train_pairs": len(train),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "train_seconds": round(metrics["train_seconds"], 1),
        "pairs_per_second": round(metrics["pairs_per_second"], 2),
        "tokens_per_second": round(metrics["tokens_per_second"]),
        "tokens_saved_by_shared_prefix": metrics["tokens_saved_by_shared_prefix"],
        "val_accuracy": round(metrics["val_accuracy"], 4),
        "peak_rss_mb": round(rss_after),
        "rss_before_training_mb": round(rss_before),
        "achieved_gflops": round(achieved / 1e9, 2),
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "fraction_of_peak": round(achieved / peak, 3),
    }))


if __name__ == "__main__":
    main()
