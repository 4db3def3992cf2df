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

Real data (bench/hh_rm_bench.py). `hh_rm_bench.py --dump DIR` writes DIR/seed<s>/ in the same layout
(backbone = the default policy or the pretrained MiniLM encoder, train / val = the exact split our
`start_run reward` used for that seed), so `--data DIR/seed<s>` runs TRL on the same split and backbone:

    /tmp/trl-venv/bin/python bench/trl_rm_bench.py --data /tmp/hh-policy/seed0 --seed 0                 # lr 3e-4, 2 epochs, cosine
    /tmp/trl-venv/bin/python bench/trl_rm_bench.py --data /tmp/hh-policy/seed0 --seed 0 --trl-defaults  # TRL's own recipe

--trl-defaults leaves learning rate, epochs, schedule, warmup, weight decay, optimiser and batch size at
TRL's RewardConfig defaults (TRL 1.16: lr 1e-4, 3 epochs, linear decay, no warmup, batch 8) and changes
only what this CPU and these models need: float32 (no bf16), no gradient checkpointing, use_cpu, and
max_length 512 (both backbones have 512 positions; TRL drops longer pairs, ours keeps the last 384 prompt
and first 128 reply tokens). Held-out pairs longer than 512 tokens are scored on their last 512 tokens
(the [CLS] token kept for an encoder).

Encoders (the MiniLM backbone, a BERT): AutoModelForSequenceClassification reads the reward from the
pooled [CLS] token. A BERT tokenizer has no EOS token, which TRL's plain-text path needs, so the pairs are
handed to TRL already tokenized exactly as TRL would (prompt + reply as one string, [CLS] ... [SEP]) and
TRL's max_length filter still applies.
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


def is_encoder(tokenizer) -> bool:
    return tokenizer.eos_token is None


def pair_ids(tokenizer, row: dict) -> dict:
    """Token ids of prompt + chosen and prompt + rejected, as TRL tokenizes plain text (EOS appended to decoders)."""
    eos = tokenizer.eos_token
    if is_encoder(tokenizer):  # [CLS] prompt reply [SEP]
        return {side: tokenizer(row["prompt"] + row[key])["input_ids"] for side, key in (("chosen_ids", "chosen"), ("rejected_ids", "rejected"))}
    return {side: tokenizer(row["prompt"] + with_eos(row[key], eos))["input_ids"] for side, key in (("chosen_ids", "chosen"), ("rejected_ids", "rejected"))}


def keep_last(ids: list[int], max_length: int, encoder: bool) -> list[int]:
    """The last max_length tokens (an encoder keeps its leading [CLS])."""
    if len(ids) <= max_length:
        return ids
    return ids[:1] + ids[len(ids) - max_length + 1 :] if encoder else ids[-max_length:]


@torch.no_grad()
def val_accuracy(model, tokenizer, rows, batch_size: int, max_length: int = 512) -> float:
    """Share of pairs whose chosen reply scores above the rejected one.

    Each side is scored as TRL trains it: prompt + reply + EOS, tokenized as one string, right-padded,
    the reward read at the last non-pad token (GPT2ForSequenceClassification uses config.pad_token_id),
    or at the pooled [CLS] token for an encoder. Longer pairs keep their last max_length tokens.
    """
    model.eval()
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    encoder = is_encoder(tokenizer)
    correct = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        examples = [{k: keep_last(v, max_length, encoder) for k, v in pair_ids(tokenizer, r).items()} for r in batch]
        inputs = {k: v.to(model.device) for k, v in collate(examples).items()}  # chosen in the first half, rejected in the second
        if not encoder:
            inputs["use_cache"] = False
        rewards = model(**inputs).logits.squeeze(-1)
        chosen, rejected = rewards.chunk(2)
        correct += int((chosen > rejected).sum())
    return correct / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder written by bench/rm_bench.py --dump, or DIR/seed<s> of bench/hh_rm_bench.py --dump")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0, help="TRL's seed (the score head's initialisation and the data order)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--trl-defaults", action="store_true", help="TRL's own lr, epochs, schedule and batch size (ignores --lr, --epochs, --batch-size)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: for bench/gpu_bench.py")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (on a GPU, as ours trains there)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    data = Path(args.data)
    backbone = str(data / "backbone")

    dataset = load_dataset(
        "json", data_files={"train": str(data / "train.jsonl"), "validation": str(data / "val.jsonl")}
    )
    tokenizer = AutoTokenizer.from_pretrained(backbone, local_files_only=True)
    encoder = is_encoder(tokenizer)
    train_dataset = dataset["train"]
    if encoder:  # no EOS token for TRL to append: hand it the token ids it would have made
        train_dataset = train_dataset.map(lambda row: pair_ids(tokenizer, row), remove_columns=train_dataset.column_names)
    set_seed(args.seed)  # the new score head is initialised at random
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=1, local_files_only=True, dtype=torch.float32
    )

    necessities = dict(  # what CPU float32 training and 512-position models need, in both settings
        max_length=args.max_length,
        activation_checkpointing=False,  # TRL turns it on by default (as gradient_checkpointing); ours does not
        bf16=args.bf16,  # TRL turns it on by default; ours trains in float32 on CPU, bf16 autocast on GPUs
        fp16=False,
        use_cpu=args.device == "cpu",
    )
    bookkeeping = dict(
        seed=args.seed,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    if args.trl_defaults:
        recipe = {}
    else:
        recipe = dict(
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=args.epochs,
            learning_rate=args.lr,
            weight_decay=0.0,
            optim="adamw_torch",  # torch.optim.AdamW, as ours (TRL's default is the fused variant)
            lr_scheduler_type="cosine",
            warmup_steps=0.1,  # a ratio of the total steps (transformers 5 folded warmup_ratio into this)
            max_grad_norm=1.0,
            disable_dropout=True,
        )
    with tempfile.TemporaryDirectory() as output_dir:
        config = RewardConfig(output_dir=output_dir, **recipe, **necessities, **bookkeeping)
        trainer = RewardTrainer(
            model=model, args=config, train_dataset=train_dataset, processing_class=tokenizer
        )
        trainer.remove_callback(PrinterCallback)  # keep stdout to the one JSON line
        train_pairs = len(trainer.train_dataset)  # after TRL's max_length filter
        start = time.perf_counter()
        result = trainer.train()
        wall_seconds = time.perf_counter() - start

    train_seconds = result.metrics["train_runtime"]
    rows = list(dataset["validation"])
    accuracy = val_accuracy(trainer.model, tokenizer, rows, 2 * config.per_device_train_batch_size, args.max_length)
    print(json.dumps({
        "trainer": "trl RewardTrainer",
        "trl_version": trl.__version__,
        "settings": "trl-defaults" if args.trl_defaults else "ours",
        "data": str(data),
        "backbone": tokenizer.__class__.__name__ if not encoder else "encoder " + model.config.model_type,
        "seed": args.seed,
        "lr": config.learning_rate,
        "lr_scheduler": str(config.lr_scheduler_type),
        "train_pairs_given": len(dataset["train"]),
        "train_pairs": train_pairs,
        "val_pairs": len(rows),
        "epochs": config.num_train_epochs,
        "batch_size": config.per_device_train_batch_size,
        "train_seconds": round(train_seconds, 1),
        "train_wall_seconds": round(wall_seconds, 1),
        "pairs_per_second": round(train_pairs * config.num_train_epochs / train_seconds, 2),
        "val_accuracy": round(accuracy, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
