"""RLOO: our trainer (training/ml/rloo.py) against Hugging Face TRL 1.16's RLOOTrainer, side by side.

One invocation does everything (3.5 to 4.5 minutes on a 2-core CPU at the defaults):

    .venv/bin/python bench/rloo_bench.py [--reward letter-e|model] [--steps 40] [--threads 1] [--seed 0]
                                         [--trl-python /tmp/trl-venv/bin/python] [--dump DIR]

It writes (or, with --dump DIR, reuses) a data folder, then starts two workers, each in its own
process so that each has its own peak RSS: ours with this interpreter (`--side ours`) and TRL's with
the interpreter of a separate environment that has TRL (`--side trl`, /tmp/trl-venv: torch 2.13 CPU,
transformers 5.23, trl 1.16, kept out of the project's requirements). Once both have loaded their
models they take turns, one training step at a time (which side goes first alternates), over a pipe:
a change in the machine's background load then hits both alike, which on a shared machine is the
fairest comparison there is. A step is timed inside its worker, from its turn to its end. The parent
prints a table and one JSON line with both sides' figures.

The folder, shared by both sides:
  policy/       a random-init GPT-2, 4 layers, width 256 (bench/ppo_bench.py's shape) with a byte-level
                BPE tokenizer (4096 tokens) trained on the text of the prompt file;
  reward/       our RewardModel on a separately seeded backbone of the same shape, random head (used
                only by --reward model);
  prompts.json  the first human turn of conversations of /work/shared/data/hh-harmless-1000.jsonl
                (read from there, never copied into the repository) whose rendered prompt
                ("\\n\\nHuman: ...\\n\\nAssistant:") fits in 128 tokens: the messages, the rendered text and
                our token ids. TRL's worker checks that TRL tokenizes every prompt to the same ids.

Same work per step on both sides: 8 prompts x k = 4 replies, up to 32 new tokens at temperature 1.0
(top-k and top-p off), generation stops when every reply has sampled EOS; the old and the reference
log-probs from a forward pass each; the RLOO reward score - 0.05 * sum_t (log pi_old - log pi_ref),
the leave-one-out advantage, the sequence-level clipped loss (epsilon 0.2); one AdamW update per step
over all 32 replies (TRL: per_device_train_batch_size 32, steps_per_generation 1, num_iterations 1),
lr 3e-4 constant, adam eps 1e-5, weight decay 0.01, gradient clipping at 1.0, dropout off, float32,
no gradient checkpointing (TRL's defaults are bf16 and checkpointing; both turned off here). No
missing-EOS penalty on either side (TRL's RLOO has none; a random policy rarely samples EOS, so the
penalty would flatten every reward).

The reward is the same deterministic function on both sides, so the reward work is identical and the
timing compares the trainers:
  --reward letter-e (the default): a rule a random-init policy can climb, 10 x the share of the letter
      'e' in the reply's text (`letter_e_share`, tests/ml/test_rloo.py's reward). Ours gets it as its
      reward_fn(prompts, texts) -> tensor, TRL as a reward function in reward_funcs (called with
      prompts=, completions= (the decoded replies, special tokens skipped), ...); both strip the text.
      Both sides' score then rises by about 0.1 to 0.2 over 40 steps (from about 1.0), against a
      step-to-step spread of the mean score of about +-0.05: a learning signal to compare the two
      trainers' reward gain at equal work, not a model of anything;
  --reward model: our RewardScorer on reward/, a random-init reward model (TRL passes extra dataset
      columns to a reward function; the prompt's messages travel that way). Its score does not move
      beyond the noise in a few dozen steps: speed only.

Reported per side: seconds per step, wall and CPU (mean over the steps after the first, which is a
warm-up), the generated tokens per second of the whole step, peak RSS of the worker process
(ru_maxrss), the reward at the start and at the end (the mean score of the first 3 and of the last 3
steps), their difference (gain), and the rise of the least-squares line through every step's score
(fit rise, less noisy than the 3-step means). --seed (default 0) seeds both trainers (sampling, prompt
order; the models in the folder are fixed): a few seeds show how far the gains differ by chance. The
prompts of a step differ between the sides (ours draws them from its seeded generator, TRL from its
shuffled sampler) and so do the sampled replies; the policy, the reward and the data are the same.
TRL's "reward" log is score - beta * KL; its raw score is the per-function mean
(rewards/<name>/mean), which is what is compared.

Threads: --threads (default 1) for both workers. On a 2-core machine shared with other work, 2
threads per process mostly measure the contention (spinning threads waiting for a core; the decoding
loop of small operations suffers most), so 1 is the default; pass --threads 2 on a quiet machine.

Figures (bench/results/rloo_speed.md; 2-core CPU shared with other test runs, load 2-5; lockstep):
  --reward letter-e, 40 steps, --threads 1, seeds 0, 0, 1, 2: ours 1.23-1.88 s/step (1.10-1.20 CPU s),
      543-829 generated tokens/s, peak RSS 801-819 MB; TRL 3.20-4.70 s/step (2.91-3.12 CPU s),
      218-320 tokens/s, 1743-1792 MB: 2.50x to 2.61x the throughput (2.57x to 2.66x in CPU time) at
      about 0.46x the peak memory. Reward gain (3-step means) ours +0.134 / +0.111 / +0.162 (seeds
      0 / 1 / 2, mean +0.136), TRL +0.170 / +0.138 / +0.095 (mean +0.134); fit rise ours +0.18 /
      +0.12 / +0.17, TRL +0.16 / +0.14 / +0.07: the same reward gain within the noise, at the same
      KL to the reference at the end (ours 3.4-3.7 nats per reply, TRL 0.10-0.13 nats per token x 32).
  --reward model, 16 steps (earlier runs): --threads 1: ours 1.24 s/step, TRL 2.96 (2.4x); --threads
      2: 2.7x at load 2-3, 1.9x at load 6. Gains within the noise on both sides (ours -0.11, TRL +0.04).
Both sides are deterministic for a thread count and seed (two runs of seed 0: the same scores).

How the trainers differ by design: TRL samples with transformers' `generate` and a prefill per reply
(ours: a lean KV-cache loop with one prefill per prompt and one uniform draw per token,
rloo.sample_groups); TRL runs every forward over prompt + reply for each of the k replies (ours runs
each prompt once and indexes its KV cache out to the replies, rloo.group_forward); TRL runs the old
log-prob forward on every step (ours reuses the update's forward, which with one update per step is
the same pass); both compute the LM head on the completion positions only and an entropy over the
full vocabulary; TRL goes through accelerate and the HF Trainer loop (dataloader, callbacks, logging).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the hub

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HH_DATA = Path("/work/shared/data/hh-harmless-1000.jsonl")
PROMPTS_PER_STEP, K, MAX_NEW_TOKENS, MAX_PROMPT_TOKENS = 8, 4, 32, 128
LR, BETA, CLIP = 3e-4, 0.05, 0.2
GAIN_WINDOW = 3  # reward at the start / end: the mean score of the first / last 3 steps
REWARDS = ("letter-e", "model")


def letter_e_share(texts: list[str]) -> list[float]:
    """The rule-based reward of --reward letter-e (tests/ml/test_rloo.py's): 10 x the share of
    the letter 'e' in the reply's text, 10 * count('e') / (len + 1). Deterministic, the same
    function on both sides, and one that a random-init policy climbs within a few dozen steps
    (a byte-level BPE vocabulary has many tokens with an 'e' in them)."""
    return [10 * text.count("e") / (len(text) + 1) for text in texts]


def signal(message: str) -> None:
    """A line to the parent on the worker's stdout (the protocol's lines start with @@)."""
    print(f"@@{message}", flush=True)


def wait_for_turn() -> None:
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("the parent stopped the run")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def first_human_turn(conversation: str) -> str:
    text = conversation.split("\n\nHuman: ", 1)[-1]
    return text.split("\n\nAssistant:", 1)[0].strip()


# --------------------------------------------------------------------------- the shared folder


def write_dump(folder: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from training.ml.bootstrap import DefaultModelConfig, new_policy, save_new_model, train_bpe_tokenizer
    from training.ml.reward_model import RewardModel
    from training.ml.text import render_prompt, tokenize_prompt

    rows = [json.loads(line) for line in HH_DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    shape = DefaultModelConfig(vocab_size=4096, n_layer=4, n_embd=256, n_head=4, n_positions=512)
    tokenizer = train_bpe_tokenizer([row["chosen"] for row in rows], shape.vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    save_new_model(new_policy(tokenizer, shape), tokenizer, folder / "policy")
    save_new_model(new_policy(tokenizer, DefaultModelConfig(**{**shape.__dict__, "seed": 1})), tokenizer, folder / "reward-backbone")
    torch.manual_seed(2)
    reward_model, reward_tokenizer = RewardModel.from_backbone(folder / "reward-backbone")
    reward_model.save_pretrained(folder / "reward", reward_tokenizer, extra={"bench": "rloo_bench.py"})
    prompts = []
    for row in rows:
        messages = [{"role": "user", "content": first_human_turn(row["chosen"])}]
        ids = tokenize_prompt(tokenizer, messages, 10**6)
        if messages[0]["content"] and len(ids) <= MAX_PROMPT_TOKENS:
            prompts.append({"messages": messages, "text": render_prompt(messages, tokenizer), "input_ids": ids})
    (folder / "prompts.json").write_text(json.dumps(prompts))


def load_prompts(folder: Path) -> list[dict]:
    return json.loads((folder / "prompts.json").read_text())


def reward_figures(scores: list[float]) -> dict:
    start, end = sum(scores[:GAIN_WINDOW]) / GAIN_WINDOW, sum(scores[-GAIN_WINDOW:]) / GAIN_WINDOW
    # the rise of the least-squares line through every step's score: less noisy than the end means
    n = len(scores)
    mean_x, mean_y = (n - 1) / 2, sum(scores) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(scores)) / sum((x - mean_x) ** 2 for x in range(n))
    return {"reward_start": start, "reward_end": end, "reward_gain": end - start, "reward_fit_rise": slope * (n - 1)}


# --------------------------------------------------------------------------- our side


def run_ours(folder: Path, steps: int, threads: int, reward: str, seed: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(threads)
    from training.ml.checkpoint import load_policy
    from training.ml.reward_model import RewardModel, RewardScorer
    from training.ml.rloo import OnlineRLConfig, OnlineRLTrainer

    prompts = load_prompts(folder)
    policy, tokenizer = load_policy(folder / "policy")
    ref_policy, _ = load_policy(folder / "policy")
    if reward == "model":
        reward_model, reward_tokenizer = RewardModel.from_pretrained(folder / "reward")
        reward_fn = RewardScorer(reward_model, reward_tokenizer)
    else:

        def reward_fn(prompts, texts):  # our RewardFn: (prompts, reply texts) -> tensor
            return torch.tensor(letter_e_share(texts))

    config = OnlineRLConfig(
        algorithm="rloo", steps=steps, prompts_per_step=PROMPTS_PER_STEP, num_samples=K, minibatch_size=PROMPTS_PER_STEP * K, epochs=1,
        lr=LR, adam_eps=1e-5, max_grad_norm=1.0, clip_range=CLIP, beta=BETA, temperature=1.0, top_p=1.0,
        max_new_tokens=MAX_NEW_TOKENS, max_prompt_tokens=MAX_PROMPT_TOKENS, missing_eos_penalty=None, bf16=False, seed=seed,
    )
    trainer = OnlineRLTrainer(policy, ref_policy, tokenizer, reward_fn, [p["messages"] for p in prompts], config)
    rss_loaded = peak_rss_mb()
    signal("ready")
    cpu = []
    for _ in range(steps):
        wait_for_turn()
        started = time.process_time()
        trainer.step()
        cpu.append(time.process_time() - started)
        signal("done")
    history = trainer.history
    timed = history[1:]
    seconds = sum(h["step_seconds"] for h in timed) / len(timed)
    tokens = sum(h["response_length"] * PROMPTS_PER_STEP * K for h in timed) / len(timed)
    scores = [h["reward_mean"] for h in history]
    return {
        "side": "ours", "seconds_per_step": seconds, "tokens_per_step": tokens, "tokens_per_second": tokens / seconds,
        "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": rss_loaded, "scores": scores, **reward_figures(scores),
        "kl": [h["kl"] for h in history], "step_seconds": [h["step_seconds"] for h in history],
        "cpu_seconds_per_step": sum(cpu[1:]) / len(cpu[1:]), "step_cpu_seconds": cpu,
    }


# --------------------------------------------------------------------------- TRL's side


def run_trl(folder: Path, steps: int, threads: int, reward: str, seed: int) -> dict:
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import RLOOConfig, RLOOTrainer

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    sys.path.insert(0, str(ROOT))  # our reward scorer (torch + transformers only), the same callable as our side
    from training.ml.reward_model import RewardModel, RewardScorer

    prompts = load_prompts(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "policy"), local_files_only=True)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.chat_template is None  # plain-text prompts, as ours renders them
    mismatched = sum(tokenizer(p["text"])["input_ids"] != p["input_ids"] for p in prompts)
    if mismatched:
        raise SystemExit(f"TRL would tokenize {mismatched} prompts differently from ours")
    policy = AutoModelForCausalLM.from_pretrained(str(folder / "policy"), local_files_only=True, dtype=torch.float32)
    if reward == "model":
        reward_model, reward_tokenizer = RewardModel.from_pretrained(folder / "reward")
        scorer = RewardScorer(reward_model, reward_tokenizer)

        def reward_model_score(prompts, completions, messages, **kwargs):
            return scorer([json.loads(m) for m in messages], [c.strip() for c in completions]).tolist()

        reward_func = reward_model_score
    else:

        def letter_e_reward(prompts, completions, **kwargs):  # TRL's reward-function signature; ours strips the reply too
            return letter_e_share([c.strip() for c in completions])

        reward_func = letter_e_reward
    score_key = f"rewards/{reward_func.__name__}/mean"

    dataset = Dataset.from_dict({"prompt": [p["text"] for p in prompts], "messages": [json.dumps(p["messages"]) for p in prompts]})

    class StepClock(TrainerCallback):
        """Each step waits for its turn, then is timed from on_step_begin to on_step_end
        (generation, scoring, loss, backward, optimiser step; not the logging after it)."""

        def __init__(self):
            self.seconds: list[float] = []
            self.cpu: list[float] = []
            self.started = (0.0, 0.0)

        def on_step_begin(self, args, state, control, **kwargs):
            wait_for_turn()
            self.started = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started[0])
            self.cpu.append(time.process_time() - self.started[1])
            signal("done")

    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        config = RLOOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=PROMPTS_PER_STEP * K, gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
            num_generations=K, max_completion_length=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0,
            learning_rate=LR, lr_scheduler_type="constant", adam_epsilon=1e-5, weight_decay=0.01, max_grad_norm=1.0,
            beta=BETA, epsilon=CLIP, normalize_advantages=False, max_steps=steps,
            bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, disable_dropout=True,
            logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=seed,
            log_completions=False,
        )
        trainer = RLOOTrainer(
            model=policy, reward_funcs=reward_func, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock],
        )
        trainer.remove_callback(PrinterCallback)
        rss_loaded = peak_rss_mb()
        signal("ready")
        trainer.train()
    logs = [entry for entry in trainer.state.log_history if score_key in entry]
    intervals = clock.seconds
    timed = intervals[1:]
    seconds = sum(timed) / len(timed)
    lengths = [entry["completions/mean_length"] for entry in logs]
    tokens = sum(lengths[1:]) / len(lengths[1:]) * PROMPTS_PER_STEP * K
    scores = [entry[score_key] for entry in logs]
    return {
        "side": f"trl {trl.__version__}", "seconds_per_step": seconds, "tokens_per_step": tokens, "tokens_per_second": tokens / seconds,
        "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": rss_loaded, "scores": scores, **reward_figures(scores),
        "kl": [entry.get("kl") for entry in logs], "step_seconds": intervals,
        "cpu_seconds_per_step": sum(clock.cpu[1:]) / len(clock.cpu[1:]), "step_cpu_seconds": clock.cpu,
    }


# --------------------------------------------------------------------------- the parent


def lockstep(commands: dict[str, list[str]], steps: int, threads: int) -> dict[str, dict]:
    """Start every worker, wait until each has loaded its models, then let them take turns, one
    step each (the first to go alternates): a change in the machine's background load between
    the turns then hits both sides alike. Returns each worker's result line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": ""}
    logs = {side: tempfile.TemporaryFile(mode="w+") for side in commands}
    procs = {side: subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[side], text=True)
             for side, command in commands.items()}

    def expect(side: str, message: str) -> str:
        for line in procs[side].stdout:
            if line.startswith("@@"):
                if not line.startswith(f"@@{message}"):
                    raise SystemExit(f"{side} worker said {line.strip()!r}, expected @@{message}")
                return line[2 + len(message):].strip()
        logs[side].seek(0)
        raise SystemExit(f"{side} worker ended early:\n{logs[side].read()[-4000:]}")

    try:
        for side in procs:
            expect(side, "ready")
        sides = list(procs)
        for step in range(steps):
            for side in sides if step % 2 == 0 else sides[::-1]:
                procs[side].stdin.write("go\n")
                procs[side].stdin.flush()
                expect(side, "done")
        results = {side: json.loads(expect(side, "result")) for side in procs}
        for proc in procs.values():
            proc.wait(timeout=120)
        return results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per side; the first is a warm-up")
    parser.add_argument("--reward", choices=REWARDS, default="letter-e",
                        help="letter-e: the rule-based share-of-'e' reward (default); model: a random-init reward model (speed only)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (see the docstring)")
    parser.add_argument("--seed", type=int, default=0, help="the trainers' seed on both sides (sampling, prompt order; the models are fixed)")
    parser.add_argument("--trl-python", default="/tmp/trl-venv/bin/python")
    parser.add_argument("--dump", help="write (or reuse) the shared folder here instead of a temporary one")
    parser.add_argument("--side", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2 * GAIN_WINDOW:
        parser.error(f"--steps must be at least {2 * GAIN_WINDOW}")

    if args.side:
        run = run_ours if args.side == "ours" else run_trl
        signal("result " + json.dumps(run(Path(args.data), args.steps, args.threads, args.reward, args.seed)))
        return

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.dump) if args.dump else Path(scratch) / "rloo-bench"
        if not (folder / "prompts.json").exists():
            write_dump(folder)
        here = str(Path(__file__).resolve())
        flags = ["--data", str(folder), "--steps", str(args.steps), "--threads", str(args.threads), "--reward", args.reward, "--seed", str(args.seed)]
        commands = {"ours": [sys.executable, here, "--side", "ours", *flags], "trl": [args.trl_python, here, "--side", "trl", *flags]}
        by_side = lockstep(commands, args.steps, args.threads)
        results = [by_side["ours"], by_side["trl"]]
    print(f"reward {args.reward}, {args.steps} steps, {args.threads} thread(s), seed {args.seed}; reward start / end: mean score of the first / last {GAIN_WINDOW} steps;"
          " fit rise: rise of the least-squares line through all steps' scores")
    print(f"{'':12s}{'s/step':>10s}{'CPU s/step':>12s}{'tokens/s':>10s}{'peak RSS MB':>13s}{'reward start':>14s}{'reward end':>12s}{'gain':>9s}{'fit rise':>10s}")
    for r in results:
        print(
            f"{r['side']:12s}{r['seconds_per_step']:10.3f}{r['cpu_seconds_per_step']:12.3f}{r['tokens_per_second']:10.0f}"
            f"{r['peak_rss_mb']:13.0f}{r['reward_start']:14.3f}{r['reward_end']:12.3f}{r['reward_gain']:+9.3f}{r['reward_fit_rise']:+10.3f}"
        )
    ours, theirs = results
    print(json.dumps({
        "shape": {"prompts_per_step": PROMPTS_PER_STEP, "k": K, "max_new_tokens": MAX_NEW_TOKENS, "max_prompt_tokens": MAX_PROMPT_TOKENS,
                  "lr": LR, "beta": BETA, "steps": args.steps, "threads": args.threads, "reward": args.reward, "seed": args.seed},
        "speedup_seconds_per_step": theirs["seconds_per_step"] / ours["seconds_per_step"],
        "speedup_tokens_per_second": ours["tokens_per_second"] / theirs["tokens_per_second"],
        "speedup_cpu_seconds_per_step": theirs["cpu_seconds_per_step"] / ours["cpu_seconds_per_step"],
        "ours": ours, "trl": theirs,
    }))


if __name__ == "__main__":
    main()
