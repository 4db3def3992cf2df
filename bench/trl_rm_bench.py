"""Hugging Face TRL's RewardTrainer on the data and model of bench/rm_bench.py, for a side-by-side comparison.

bench/rm_bench.py --dump DIR writes DIR/backbone (a random-init GPT-2, 4 layers, width 256, with its
tokenizer) and DIR/train.jsonl, DIR/val.jsonl ({"prompt", "chosen", "rejected"} in plain text). This
script trains a reward model on them with TRL, set up as close to our trainer as TRL allows: 2 CPU
threads, batch 8 pairs, 2 epochs, AdamW at lr 3e-4, no weight decay, 10% warmup then cosine, gradient
clipping at 1.0, dropout off, float32, no gradient checkpointing, sequences up to 512 tokens. It prints
one JSON line: train time, pairs per second, validation pair accuracy and peak memory.

It needs its own environment with TRL (kept out of the project's requirements):

    python3 -m venv /tmp/trl-venv
    /tmp/trl-venv/bin/pip install torch==2.13.0 transformers==5.23.0 trl datasets accelerate
    python bench/rm_bench.py --dump /tmp/rmbench
    /tmp/trl-venv/bin/python bench/trl_rm_bench.py --data /tmp/rmbench

How TRL differs from our trainer, by design: it scores prompt + chosen and prompt + rejected as two
full sequences (16 sequences per batch of 8 pairs, the prompt run twice), where ours runs the prompt
once and shares it; it pads each batch to its longest sequence with no grouping by length; and it
drops (rather than truncates) pairs longer than max_length (none in this data).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the hub

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
import transformers
import trl
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PrinterCallback, set_seed
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference


def with_eos(text: str, eos: str) -> str:
    """TRL appends EOS to each plain-text reply that lacks it (RewardTrainer._prepare_dataset)."""
    return text if text.endswith(eos) else text + eos


@torch.no_grad()
def val_accuracy(model, tokenizer, rows, batch_size: int) -> float:
    """Share of pairs whose chosen reply scores above the rejected one.

    Each side is scored as TRL trains it: prompt + reply + EOS, tokenized as one string, right-padded,
    the reward read at the last non-pad token (GPT2ForSequenceClassification uses config.pad_token_id).
    """
    model.eval()
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    eos = tokenizer.eos_token
    correct = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        examples = [
            {
                "chosen_ids": tokenizer(r["prompt"] + with_eos(r["chosen"], eos))["input_ids"],
                "rejected_ids": tokenizer(r["prompt"] + with_eos(r["rejected"], eos))["input_ids"],
            }
            for r in batch
        ]
        inputs = collate(examples)  # chosen in the first half, rejected in the second
        rewards = model(**inputs, use_cache=False).logits.squeeze(-1)
        chosen, rejected = rewards.chunk(2)
        correct += int((chosen > rejected).sum())
    return correct / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder written by bench/rm_bench.py --dump")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    data = Path(args.data)
    backbone = str(data / "backbone")

    dataset = load_dataset(
        "json", data_files={"train": str(data / "train.jsonl"), "validation": str(data / "val.jsonl")}
    )
    tokenizer = AutoTokenizer.from_pretrained(backbone, local_files_only=True)
    set_seed(0)  # the new score head is initialised at random
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=1, local_files_only=True, dtype=torch.float32
    )

    with tempfile.TemporaryDirectory() as output_dir:
        config = RewardConfig(
            output_dir=output_dir,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=args.epochs,
            learning_rate=args.lr,
            weight_decay=0.0,
            optim="adamw_torch",  # torch.optim.AdamW, as ours (TRL's default is the fused variant)
            lr_scheduler_type="cosine",
            warmup_steps=0.1,  # a ratio of the total steps (transformers 5 folded warmup_ratio into this)
            max_grad_norm=1.0,
            max_length=512,
            seed=0,
            disable_dropout=True,
            activation_checkpointing=False,  # TRL turns it on by default (as gradient_checkpointing); ours does not
            bf16=False,  # TRL turns it on by default; ours trains in float32
            fp16=False,
            use_cpu=True,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
        )
        trainer = RewardTrainer(
            model=model, args=config, train_dataset=dataset["train"], processing_class=tokenizer
        )
        trainer.remove_callback(PrinterCallback)  # keep stdout to the one JSON line
        train_pairs = len(trainer.train_dataset)  # after TRL's max_length filter
        start = time.perf_counter()
        result = trainer.train()
        wall_seconds = time.perf_counter() - start

    train_seconds = result.metrics["train_runtime"]
    accuracy = val_accuracy(trainer.model, tokenizer, list(dataset["validation"]), 2 * args.batch_size)
    print(json.dumps({
        "trainer": "trl RewardTrainer",
        "trl_version": trl.__version__,
        "train_pairs": train_pairs,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "train_seconds": round(train_seconds, 1),
        "train_wall_seconds": round(wall_seconds, 1),
        "pairs_per_second": round(train_pairs * args.epochs / train_seconds, 2),
        "val_accuracy": round(accuracy, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
