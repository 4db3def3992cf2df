"""How long a demo cycle (reward model, PPO, generation) takes with the default settings.

What `make run` gives a newcomer, end to end, in a throw-away SQLite database: the demo
project (`seed_demo`), the built-in default policy (`bootstrap_models`, or --policy DIR to
reuse one), then three simulated annotators judge every demo task the way its author
ranked the replies (the demo's metadata), and a cycle runs in this process with NO config:
the device-sized defaults and the honest gates decide. Prints one JSON line: judgements,
seconds per stage, and for each stage whether it promoted and why (in words).

    python bench/demo_cycle_bench.py [--policy DIR] [--annotators 3]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", help="an existing default policy folder (skips bootstrap_models)")
    parser.add_argument("--annotators", type=int, default=3)
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

    from labeling.models import Project
    from labeling.services import JudgementInput, assign_next_task, create_annotator, submit_judgement
    from training import runner, services
    from training.models import ModelVersion, TrainingRun

    torch.set_num_threads(args.threads)
    call_command("migrate", verbosity=0)
    call_command("seed_demo", stdout=open(os.devnull, "w"))
    started = time.perf_counter()
    if not args.policy:
        call_command("bootstrap_models", "--no-progress", stdout=open(os.devnull, "w"))
    bootstrap_seconds = time.perf_counter() - started

    project = Project.objects.get(name__startswith="Demo")
    rng = random.Random(0)
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
            **{k: stage.metrics.get(k) for k in ("val_accuracy", "val_pairs", "train_judgements", "steps", "reward_gain", "eval_wins", "eval_losses", "kl") if k in stage.metrics},
        }
    print(json.dumps({
        "judgements": judged,
        "bootstrap_seconds": round(bootstrap_seconds, 1),
        "cycle_status": cycle.status,
        "cycle_seconds": round(cycle_seconds, 1),
        "cycle_error": cycle.error[-2000:] or None,
        "stages": stages,
        "log": cycle.log_tail.splitlines()[-6:],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }, indent=1))


if __name__ == "__main__":
    main()
