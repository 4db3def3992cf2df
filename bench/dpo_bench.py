"""DPO: our trainer (training/ml/dpo.py) against Hugging Face TRL's DPOTrainer, in one invocation.

    python bench/dpo_bench.py                      # defaults: 480 train pairs, 200 held out, 1 epoch, batch 8
    python bench/dpo_bench.py --train-pairs 800 --epochs 2 --trl-precompute

Both trainers get the same random-init GPT-2 (4 layers, width 256, 512 positions: the default
policy's shape, bootstrap.DefaultModelConfig), the same byte-level BPE tokenizer (trained on the
training pairs' text), the same pairs from /work/shared/data/hh-harmless-1000.jsonl (read in place,
never copied), the same batch size, beta, learning rate, schedule (10% warmup, cosine), gradient
clipping, optimiser (fused AdamW, no weight decay), float32 on the CPU with the same thread count,
no dropout and no gradient checkpointing. Each trainer runs in a fresh process (ours in this venv,
TRL in its own venv, /tmp/trl-venv) so that its timing and peak RSS are its own.

Same tokens. Pairs are kept only when the prompt fits in --max-prompt tokens and each reply plus
EOS in --max-reply tokens, so neither trainer truncates anything. TRL gets the pairs as plain text
exactly as our model sees them (text.render_prompt / render_reply: the HH transcript form, the
reply after a space) and appends EOS itself; the tokenizer splits at that boundary, so the token ids
are the same.

Timed: building the trainer (tokenizing the data; for TRL with --trl-precompute, its reference
pass) plus training (ours includes its one reference pass, TRL without precompute runs a reference
forward every step). pairs/s = training pairs x epochs / those seconds. On a shared machine other
processes slow runs down by up to 3x, so `--repeats N` runs the trainers N times, interleaved, and
the table shows each one's fastest run, with two steadier figures beside it: pairs/s with every
step at the run's median step time (plus its set-up), and pairs per CPU-second.

Measured 2026-11-29 on the 2-core CPU box, `--train-pairs 240 --held-out 400 --repeats 2
--trl-precompute` (240 training pairs, 286 held-out pairs fit, 30 steps of 8 pairs, lr 5e-4, beta 0.1),
with other jobs loading the machine (load average 3-5):

    trainer (fastest of 2)                         pairs/s  median-step pairs/s  pairs/CPU-s  peak RSS MB  held-out acc
    ours (training/ml/dpo.py)                         3.53                 2.92        3.412          909         0.577
    trl DPOTrainer 1.16.0                             1.16                 1.20        1.209         2016         0.580
    trl DPOTrainer 1.16.0 (precompute_ref_log_probs)  1.15                 1.15        1.169         1930         0.580

ours / TRL: 3.0x pairs/s, 2.4x at the median step time, 2.8x per CPU-second; the held-out accuracies
differ by one pair of 286 (both trainers minimise the same loss on the same pairs, in another order).
Runs at a quieter moment gave ours 6.0 pairs/s (39.8 s) and TRL 3.1 pairs/s (77.6 s), not in the same
invocation. Where the speed comes from: ours computes the reference once (TRL: a reference forward
each step), runs each prompt once for both replies, and packs prompt + replies into one row with no
padding inside it and rows sorted by length (1.03 padded tokens per real token here; TRL pads 16 rows
of prompt + reply to the longest: about 2.9 tokens per token ours computes).

Accuracy: both final models are scored here by the same code (dpo.reply_logprobs, summed log-probs
of reply + EOS given the prompt, shared prefix): the held-out implicit-reward accuracy is the share
of held-out pairs with log pi(chosen) - log ref(chosen) > log pi(rejected) - log ref(rejected),
ref being the starting model. Held-out pairs are later lines of the file whose prompts are not
among the training prompts.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("/work/shared/data/hh-harmless-1000.jsonl")
TRL_PYTHON = Path("/tmp/trl-venv/bin/python")


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


# --------------------------------------------------------------------------- data and model (this venv)


def read_pairs(path: Path) -> list[tuple[list[dict], str, str]]:
    """(conversation, chosen, rejected) per usable line, as the `hh` importer reads them."""
    sys.path.insert(0, str(REPO))
    from labeling.importing.formats import RecordError, parse_hh_object

    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = parse_hh_object(json.loads(line), number, 4)
        except RecordError:
            continue
        chosen, rejected = record.responses
        if chosen.strip() and rejected.strip() and chosen != rejected:
            pairs.append((record.messages, chosen, rejected))
    return pairs


def prepare(args, workdir: Path) -> dict:
    """Backbone folder, train / held-out pairs (TRL's text form and ours), written to workdir."""
    sys.path.insert(0, str(REPO))
    import torch

    from training.ml.bootstrap import DefaultModelConfig, new_policy, save_new_model, train_bpe_tokenizer
    from training.ml.text import render_prompt, render_reply, tokenize_prompt, tokenize_reply

    pairs = read_pairs(args.data)
    cut = len(pairs) * 3 // 5  # the first 60% of the file for training, the rest for held-out pairs
    texts = [m["content"] for messages, _, _ in pairs[:cut] for m in messages] + [r for _, c, w in pairs[:cut] for r in (c, w)]
    tokenizer = train_bpe_tokenizer(texts, 4096)
    torch.manual_seed(args.seed)
    model = new_policy(tokenizer, DefaultModelConfig(seed=args.seed))
    save_new_model(model, tokenizer, workdir / "backbone")

    def fits(messages, chosen, rejected) -> bool:
        big = 1 << 20
        return (
            len(tokenize_prompt(tokenizer, messages, big)) <= args.max_prompt
            and max(len(tokenize_reply(tokenizer, r, big)) for r in (chosen, rejected)) <= args.max_reply
        )

    train = [p for p in pairs[:cut] if fits(*p)][: args.train_pairs]
    seen = {json.dumps(m) for m, _, _ in train}
    held = [p for p in pairs[cut:] if fits(*p) and json.dumps(p[0]) not in seen][: args.held_out]
    for name, rows in (("train", train), ("val", held)):
        with (workdir / f"{name}.jsonl").open("w") as f:
            for messages, chosen, rejected in rows:
                f.write(json.dumps({
                    "messages": messages, "chosen_reply": chosen, "rejected_reply": rejected,  # ours
                    "prompt": render_prompt(messages), "chosen": render_reply(chosen), "rejected": render_reply(rejected),  # TRL
                }) + "\n")
    return {"train_pairs": len(train), "held_out_pairs": len(held), "usable_pairs_in_file": len(pairs)}


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def preference_examples(rows: list[dict]):
    from training.ml.data import PreferenceExample

    return [PreferenceExample(str(i), r["messages"], [r["chosen_reply"], r["rejected_reply"]], [(0, 1, 0.0)]) for i, r in enumerate(rows)]


# --------------------------------------------------------------------------- workers


def run_ours(args, workdir: Path) -> dict:
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(args.threads)
    from training.ml.checkpoint import load_policy, save_policy
    from training.ml.dpo import DPOConfig, DPOTrainer

    train = preference_examples(load_rows(workdir / "train.jsonl"))
    policy, tokenizer = load_policy(workdir / "backbone")
    config = DPOConfig(
        beta=args.beta, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, warmup_ratio=0.1, max_grad_norm=1.0,
        max_prompt_tokens=args.max_prompt, max_reply_tokens=args.max_reply, bf16=False, seed=args.seed,
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer = DPOTrainer(policy, tokenizer, train, config)
    built = time.perf_counter()
    trainer.compute_reference()
    referenced = time.perf_counter()
    metrics = trainer.train()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    save_policy(policy, tokenizer, workdir / "ours-model")
    median_step = statistics.median(h["step_seconds"] for h in trainer.history)
    return {
        "trainer": "ours (training/ml/dpo.py)",
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "reference_seconds": round(referenced - built, 2),
        "steps": trainer.step_count,
        "pairs_per_second": round(len(train) * args.epochs / seconds, 2),
        "pairs_per_cpu_second": round(len(train) * args.epochs / cpu_seconds, 3),
        "median_step_seconds": round(median_step, 3),
        # robust to a busy machine: every step at the median step time, plus the set-up (tokenizing, the reference pass)
        "pairs_per_second_median": round(len(train) * args.epochs / (median_step * trainer.step_count + (referenced - started)), 2),
        "final_train_loss": round(metrics["loss"], 4),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_trl(args, workdir: Path) -> dict:
    """Runs in /tmp/trl-venv: only torch, transformers, datasets and trl."""
    import torch
    import transformers
    import trl
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback, set_seed
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    backbone = str(workdir / "backbone")
    dataset = load_dataset("json", data_files={"train": str(workdir / "train.jsonl")})["train"]
    dataset = dataset.select_columns(["prompt", "chosen", "rejected"])
    tokenizer = AutoTokenizer.from_pretrained(backbone, local_files_only=True)
    set_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(backbone, local_files_only=True, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as output_dir:
        config = DPOConfig(
            output_dir=output_dir,
            beta=args.beta,
            loss_type=["sigmoid"],
            learning_rate=args.lr,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            lr_scheduler_type="cosine",
            warmup_steps=0.1,  # a ratio of the total steps (transformers 5)
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch_fused",  # ours: torch's fused AdamW
            disable_dropout=True,
            max_length=args.max_prompt + args.max_reply,  # nothing is truncated (the pairs were chosen to fit)
            precompute_ref_log_probs=args.trl_precompute,
            gradient_checkpointing=False,
            bf16=False,
            fp16=False,
            use_cpu=True,
            seed=args.seed,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        setup_seconds = time.perf_counter() - started
        trainer.remove_callback(PrinterCallback)
        step_seconds: list[float] = []

        class StepTimer(TrainerCallback):
            def on_step_begin(self, *_, **__):
                self.started = time.perf_counter()

            def on_step_end(self, *_, **__):
                step_seconds.append(time.perf_counter() - self.started)

        trainer.add_callback(StepTimer())
        train_pairs = len(trainer.train_dataset)
        result = trainer.train()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    trainer.model.save_pretrained(workdir / "trl-model")
    tokenizer.save_pretrained(workdir / "trl-model")
    return {
        "trainer": f"trl DPOTrainer {trl.__version__}" + (" (precompute_ref_log_probs)" if args.trl_precompute else ""),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "train_runtime": round(result.metrics["train_runtime"], 2),
        "steps": result.global_step,
        "train_pairs": train_pairs,
        "pairs_per_second": round(train_pairs * args.epochs / seconds, 2),
        "pairs_per_cpu_second": round(train_pairs * args.epochs / cpu_seconds, 3),
        "median_step_seconds": round(statistics.median(step_seconds), 3),
        # every step at the median step time (each runs the reference forward too), plus the set-up (tokenizing, the
        # reference model's copy; with precompute_ref_log_probs the reference pass)
        "pairs_per_second_median": round(train_pairs * args.epochs / (statistics.median(step_seconds) * result.global_step + setup_seconds), 2),
        "final_train_loss": round(result.metrics.get("train_loss", float("nan")), 4),
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------- scoring (this venv)


def held_out_accuracy(args, workdir: Path, model_dir: str) -> float:
    """Implicit-reward accuracy of a trained model on the held-out pairs, the starting model as the reference."""
    sys.path.insert(0, str(REPO))
    import torch

    from training.ml.checkpoint import load_policy
    from training.ml.dpo import DPOConfig, collate, reply_logprobs, tokenize_examples

    config = DPOConfig(max_prompt_tokens=args.max_prompt, max_reply_tokens=args.max_reply)
    held = preference_examples(load_rows(workdir / "val.jsonl"))
    scores = []
    for folder in ("backbone", model_dir):
        model, tokenizer = load_policy(workdir / folder)
        model.eval()
        data = tokenize_examples(held, tokenizer, config)
        values = []
        with torch.no_grad():
            for start in range(0, len(data), 32):
                batch, _ = collate(data[start : start + 32], tokenizer.pad_token_id, torch.device("cpu"))
                values.append(reply_logprobs(model, batch))
        scores.append(torch.cat(values).view(-1, 2).double())
    ratio = scores[1] - scores[0]  # (pairs, [chosen, rejected]) log pi - log ref
    return float((ratio[:, 0] > ratio[:, 1]).double().mean())


def worker(kind: str, args, workdir: Path) -> dict:
    python = str(TRL_PYTHON) if kind.startswith("trl") else sys.executable
    command = [python, __file__, "--worker", kind, "--workdir", str(workdir)] + [a for a in sys.argv[1:] if a not in ("--worker", "--workdir")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--train-pairs", type=int, default=480)
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-prompt", type=int, default=256)
    parser.add_argument("--max-reply", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="run each trainer this many times, interleaved; report the fastest")
    parser.add_argument("--trl-precompute", action="store_true", help="also run TRL with precompute_ref_log_probs=True")
    parser.add_argument("--worker", choices=["ours", "trl", "trl-precompute"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # one trainer, in its own process; prints one JSON line
        if args.worker == "trl-precompute":
            args.trl_precompute = True
        elif args.worker == "trl":
            args.trl_precompute = False
        print(json.dumps((run_ours if args.worker == "ours" else run_trl)(args, args.workdir)))
        return

    if not TRL_PYTHON.exists():
        raise SystemExit(f"TRL's venv is missing: {TRL_PYTHON} (see bench/trl_rm_bench.py for how it is made)")
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
        workdir = Path(tmp)
        setup = prepare(args, workdir)
        print(json.dumps({"setup": setup, "settings": {k: str(v) for k, v in vars(args).items() if k not in ("worker", "workdir")}}), flush=True)
        kinds = ["ours", "trl"] + (["trl-precompute"] if args.trl_precompute else [])
        runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for repeat in range(args.repeats):  # interleaved, so that load from other processes hits both alike
            for kind in kinds:
                result = worker(kind, args, workdir)
                model_dir = {"ours": "ours-model"}.get(kind, "trl-model")
                result["held_out_accuracy"] = round(held_out_accuracy(args, workdir, model_dir), 4)
                shutil.rmtree(workdir / model_dir)
                runs[kind].append(result)
                print(json.dumps({kind: result, "repeat": repeat}), flush=True)
        # the fastest run of each trainer (a shared machine only ever slows a run down); its accuracy is
        # the same in every repeat (same seed, same data order)
        results = {kind: max(rs, key=lambda r: r["pairs_per_second"]) for kind, rs in runs.items()}
        ours = results["ours"]
        print()
        print(
            f"{'trainer (fastest of ' + str(args.repeats) + ')':52} {'pairs/s':>8} {'median-step pairs/s':>19} {'pairs/CPU-s':>11} "
            f"{'seconds':>8} {'peak RSS MB':>12} {'held-out acc':>13}"
        )
        for kind, r in results.items():
            print(
                f"{r['trainer']:52} {r['pairs_per_second']:8.2f} {r['pairs_per_second_median']:19.2f} {r['pairs_per_cpu_second']:11.3f} "
                f"{r['seconds']:8.1f} {r['peak_rss_mb']:12d} {r['held_out_accuracy']:13.3f}"
            )
        for kind, r in results.items():
            if kind != "ours":
                print(
                    f"ours over {r['trainer']}: {ours['pairs_per_second'] / r['pairs_per_second']:.2f}x pairs/s, "
                    f"{ours['pairs_per_second_median'] / r['pairs_per_second_median']:.2f}x at the median step time, "
                    f"{ours['pairs_per_cpu_second'] / r['pairs_per_cpu_second']:.2f}x pairs per CPU-second"
                )

if __name__ == "__main__":
    main()
