"""How long a demo cycle (reward model, PPO, generation) takes with the default settings, and
whether it promotes a reward model and a PPO policy and generates new tasks (#20).

What `make run` gives a newcomer, end to end, in a throw-away SQLite database per seed: the
demo project (`seed_demo`), the built-in default policy (`bootstrap_models`, or --policy DIR
to reuse one), then a judgement history, then a full cycle in this process with NO config:
the device-sized defaults and the honest gates decide.

--history simulated (the default): what the dashboard's "Load a simulated judgement
history" loads (`seed_demo --simulated-history`): the policy's replies to the demo prompts
ranked by three simulated annotators (training/ml/simulated.py). --history demo-ranking:
instead, three simulated annotators judge the demo's own hand-written tasks the way its
author ranked the replies (the only history before #20; PPO then learned nothing).

Prints one JSON object per seed (judgements, seconds per stage, for each stage whether it
promoted and why, in words), then a summary line.

    python bench/demo_cycle_bench.py [--policy DIR] [--seeds 0 1 2] [--history simulated|demo-ranking]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rule_on_held_out(project) -> dict | None:
    """The simulated annotators' own rule, not the reward model, on the held-out prompts the
    gate used: the word overlap with the reference answer of the starting policy's and the
    promoted policy's replies (same seed). Did the policy get better by the rule the
    judgements came from, or only by the reward model's reading of it?"""
    import torch

    from training import runner, selectors, services
    from training.defaults import default_policy_dir
    from training.ml.checkpoint import load_policy
    from training.ml.generation import SamplingConfig, generate
    from training.ml.ppo import PPOConfig, ppo_defaults_for
    from training.ml.simulated import reference_overlap
    from training.simulated_history import demo_references

    policy = services.active_version(project, "policy")
    if policy is None:
        return None
    rules = services.training_settings_for(project)
    _, held_out = runner.split_eval_prompts(selectors.policy_prompts(project), rules.policy_eval_prompts)
    references = {json.dumps(prompt.messages, sort_keys=True): reference for prompt, reference in demo_references(project)}
    held_out = [m for m in held_out if json.dumps(m, sort_keys=True) in references]
    ppo = PPOConfig(**ppo_defaults_for(torch.device("cpu")))
    sampling = SamplingConfig(temperature=ppo.temperature, max_new_tokens=ppo.max_new_tokens)
    overlaps = []
    for path in (default_policy_dir(), policy.artifact_path):
        model, tokenizer = load_policy(path)
        torch.manual_seed(1234)
        replies = [samples[0].text for samples in generate(model, tokenizer, held_out, sampling)]
        overlaps.append([reference_overlap(text, references[json.dumps(m, sort_keys=True)]) for m, text in zip(held_out, replies)])
    before, after = overlaps
    return {
        "prompts": len(held_out),
        "overlap_before": round(sum(before) / len(before), 4),
        "overlap_after": round(sum(after) / len(after), 4),
        "better": sum(a > b for a, b in zip(after, before)),
        "worse": sum(a < b for a, b in zip(after, before)),
    }


def one_seed(seed: int, args) -> dict:
    """One fresh database: demo, history of `seed`, one full cycle with the defaults."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    from labeling.models import Project
    from labeling.services import JudgementInput, assign_next_task, create_annotator, submit_judgement
    from training import runner, services
    from training.models import ModelVersion, TrainingRun

    work = Path(tempfile.mkdtemp(prefix=f"demo-cycle-{seed}-"))
    connections["default"].close()
    connections["default"].settings_dict["NAME"] = str(work / "db.sqlite3")
    settings.ARTIFACT_ROOT = work / "artifacts"  # run ids start again at 1: a folder of its own
    call_command("migrate", verbosity=0)
    call_command("seed_demo", stdout=open(os.devnull, "w"))
    project = Project.objects.get(name__startswith="Demo")
    started = time.perf_counter()
    if args.history == "simulated":
        history = services.start_run(project=project, kind="simulate", config={"seed": seed}, enqueue=False)
        runner.execute(history.pk)
        history.refresh_from_db()
        judged = history.metrics.get("simulated_judgements", 0)
    else:
        rng = random.Random(seed)
        judged = 0
        for i in range(args.annotators):
            annotator = create_annotator(username=f"bench-annotator-{i}", password=f"bench-pass-{i}-x7")
            while (assignment := assign_next_task(project=project, annotator=annotator, rng=rng)) is not None:
                ranking = assignment.task.prompt.metadata.get("ranking") or []
                position = {tr.response_id: tr.position for tr in assignment.task.task_responses.all()}
                order = [ranking.index(position[rid]) if position[rid] in ranking else len(ranking) for rid in assignment.display_order]
                if len(order) == 2:
                    judgement = JudgementInput("A" if order[0] < order[1] else "B", 2)
                else:
                    judgement = JudgementInput("ranking", ranks=[1 + sorted(order).index(o) for o in order])
                submit_judgement(annotator=annotator, assignment_id=assignment.pk, judgement=judgement)
                judged += 1
    history_seconds = time.perf_counter() - started

    cycle = services.start_run(project=project, kind="cycle", enqueue=False)
    started = time.perf_counter()
    runner.execute(cycle.pk)
    cycle_seconds = time.perf_counter() - started
    cycle.refresh_from_db()
    stages = {}
    for stage in TrainingRun.objects.filter(parent=cycle).order_by("pk"):
        seconds = (stage.finished_at - stage.started_at).total_seconds() if stage.finished_at and stage.started_at else None
        version = ModelVersion.objects.filter(produced_by=stage).first()
        stages[stage.kind] = {
            "status": stage.status,
            "seconds": round(seconds, 1) if seconds is not None else None,
            "promoted": version.status == "active" if version else None,
            "why": version.promotion_note if version else stage.metrics.get("tasks_created"),
            **{k: stage.metrics.get(k) for k in ("val_accuracy", "val_pairs", "train_judgements", "steps", "reward_gain", "eval_wins", "eval_losses", "kl_k3") if k in stage.metrics},
        }
    return {
        "seed": seed,
        "history": args.history,
        "rule_on_held_out": rule_on_held_out(project),
        "judgements": judged,
        "history_seconds": round(history_seconds, 1),
        "cycle_status": cycle.status,
        "cycle_seconds": round(cycle_seconds, 1),
        "cycle_error": cycle.error[-2000:] or None,
        "stages": stages,
        "outcome": runner.selectors.run_outcome(cycle),
        "log": cycle.log_tail.splitlines()[-4:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", help="an existing default policy folder (skips bootstrap_models)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--history", choices=["simulated", "demo-ranking"], default="simulated")
    parser.add_argument("--annotators", type=int, default=3, help="with --history demo-ranking")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="demo-cycle-"))
    os.environ["DATABASE_URL"] = f"sqlite:///{work / 'db.sqlite3'}"
    os.environ["ARTIFACT_ROOT"] = str(work / "artifacts")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_site.settings")
    if args.policy:
        os.environ["DEFAULT_POLICY_PATH"] = str(Path(args.policy).resolve())
    import django

    django.setup()
    import torch
    from django.core.management import call_command

    torch.set_num_threads(args.threads)
    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    if not args.policy:
        call_command("bootstrap_models", "--no-progress", stdout=open(os.devnull, "w"))
    bootstrap_seconds = time.perf_counter() - started
    results = []
    for seed in args.seeds:
        result = one_seed(seed, args)
        results.append(result)
        print(json.dumps(result, indent=1), flush=True)

    def promoted(result, kind):
        return bool(result["stages"].get(kind, {}).get("promoted"))

    print(json.dumps({
        "seeds": len(results),
        "bootstrap_seconds": round(bootstrap_seconds, 1),
        "reward_promoted": sum(promoted(r, "reward") for r in results),
        "ppo_promoted": sum(promoted(r, "ppo") for r in results),
        "tasks_generated": [r["stages"].get("generate", {}).get("why") for r in results],
        "history_plus_cycle_seconds": [round(r["history_seconds"] + r["cycle_seconds"], 1) for r in results],
        "rule_on_held_out": [r["rule_on_held_out"] for r in results],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
