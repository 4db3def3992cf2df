"""Reward model, or DPO policy, on real human preferences (Anthropic HH-RLHF), through the product path.

What a user does, end to end, in a throw-away SQLite database and artifact folder:

    manage.py migrate
    manage.py import_data hh-harmless-1000.jsonl --project NAME --format hh --with-labels --skip-invalid
    manage.py bootstrap_models                       # REWARD_BACKBONE=policy only
    manage.py start_run reward --project NAME        # no config: the defaults
    manage.py start_run dpo --project NAME           # --kind dpo: DPO on the same judgements, defaults

(here: `import_stream(..., fmt="hh", with_labels=True, skip_invalid=True)`: three lines of the file have an
empty final reply and are refused without --skip-invalid, `build_default_policy` as bootstrap_models
calls it, `training.services.start_run(..., enqueue=False)` and `training.runner.execute`). The only
config passed is the seed, `{"reward": {"seed": s}}`, which also seeds the train / validation split.
Prints one JSON line per seed: backbone, seed, train / validation pairs, held-out accuracy and loss,
epochs run, train seconds, pairs per second, peak RSS.

--kind dpo runs `start_run dpo` instead (seed `{"dpo": {"seed": s}}`, which also seeds its split) from the
default policy and prints the held-out implicit-reward accuracy, the KL to the starting policy on its own
samples for the evaluation prompts, and whether the gate promoted it, with its reason in words.
--config JSON adds run config (e.g. '{"dpo": {"beta": 0.3}}'): the line then says the run did not use the
defaults (`"defaults": false`).

    python bench/hh_rm_bench.py --backbone policy --seeds 0 1 2
    python bench/hh_rm_bench.py --backbone minilm --seeds 0 1 2 --dump /tmp/hh-minilm
    python bench/hh_rm_bench.py --kind dpo --seeds 0 1 2
    /tmp/trl-venv/bin/python bench/trl_rm_bench.py --data /tmp/hh-minilm/seed0

--dump DIR writes DIR/seed<s>/{train,val}.jsonl (the exact split, as TRL's {"prompt", "chosen",
"rejected"} plain text rendered as our model sees it) and DIR/seed<s>/backbone (the backbone folder).
The database, the import and the default policy are made once (one process); each seed then trains
in a fresh process, a new run of the same project, so that timings and peak RSS are per run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/hh-harmless-1000.jsonl"
PROJECT = "hh-harmless"


def django_setup(workdir: Path, backbone: str, threads: int) -> None:
    """Settings are read at django.setup(): everything points into the throw-away folder."""
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'db.sqlite3'}"
    os.environ["ARTIFACT_ROOT"] = str(workdir / "artifacts")
    os.environ.pop("DEFAULT_POLICY_PATH", None)
    os.environ["REWARD_BACKBONE"] = backbone
    os.environ["DJANGO_SETTINGS_MODULE"] = "feedback_site.settings"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(threads)
    import django

    django.setup()


def setup(workdir: Path, backbone: str, data: Path, threads: int) -> dict:
    """migrate, create the project, import with labels, bootstrap the default policy."""
    django_setup(workdir, backbone, threads)
    from django.core.management import call_command

    from labeling.importing.services import import_stream
    from labeling.models import Project
    from training.defaults import default_policy_dir, demo_demonstrations, project_corpus
    from training.ml.bootstrap import DefaultModelConfig, build_default_policy

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    project = Project.objects.create(name=PROJECT)
    with data.open("rb") as stream:
        report = import_stream(project=project, stream=stream, fmt="hh", source=str(data), with_labels=True, skip_invalid=True)
    imported = {k: v for k, v in vars(report).items() if isinstance(v, (int, float, str))}
    if backbone == "policy":  # what `manage.py bootstrap_models` does, with its defaults (6 SFT epochs)
        build_default_policy(
            corpus=project_corpus(), demonstrations=demo_demonstrations(), out_dir=default_policy_dir(),
            config=DefaultModelConfig(), sft_epochs=6,
        )
    return {"imported": imported, "setup_seconds": round(time.perf_counter() - started, 1)}


def run_here(project, kind: str, config: dict):
    """start_run (not queued) and execute it in this process: (the finished run, wall seconds)."""
    from training import runner, services
    from training.models import RunStatus, TrainingRun

    run = services.start_run(project=project, kind=kind, config=config, enqueue=False)
    started = time.perf_counter()
    runner.execute(run.pk)
    wall = time.perf_counter() - started
    run = TrainingRun.objects.get(pk=run.pk)
    if run.status != RunStatus.SUCCEEDED:
        raise SystemExit(f"run {run.pk} {run.status}: {run.error}")
    return run, wall


def train_dpo(workdir: Path, seed: int, extra: dict, threads: int) -> dict:
    """`start_run dpo` with the defaults (only the seed, plus --config), executed here."""
    django_setup(workdir, "policy", threads)
    from labeling.models import Project
    from training import services
    from training.models import ModelVersion

    project = Project.objects.get(name=PROJECT)
    config = {**extra, "dpo": {"seed": seed, **(extra.get("dpo") or {})}}
    run, wall = run_here(project, "dpo", config)
    m = run.metrics
    version = ModelVersion.objects.filter(produced_by=run).order_by("-pk").first()
    promoted = version is not None and version.status == "active"
    if promoted:  # the next seed starts from the default policy again
        services.roll_back(project=project, kind="policy", to="builtin")
    rounded = lambda key, digits=4: None if m.get(key) is None else round(m[key], digits)  # noqa: E731
    return {
        "trainer": "ours (start_run dpo)", "defaults": not extra, "config": config, "seed": seed,
        "train_judgements": m.get("train_judgements"), "val_pairs": m.get("dpo_val_pairs"),
        "val_accuracy": rounded("dpo_val_accuracy"), "val_margin": rounded("dpo_val_margin"),
        "train_accuracy": rounded("train_accuracy"), "train_loss": rounded("train_loss"),
        "kl": rounded("kl", 3), "kl_prompts": m.get("kl_prompts"),
        "promoted": promoted,
        "promotion_note": None if version is None else version.promotion_note,
        "steps": m.get("steps"), "run_wall_seconds": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def train(workdir: Path, backbone: str, seed: int, dump: Path | None, threads: int) -> dict:
    """`start_run reward` with the defaults (only the seed), executed here; plus the --dump of its split."""
    django_setup(workdir, backbone, threads)
    from labeling.models import Project
    from training import selectors
    from training.defaults import reward_backbone_dir
    from training.ml.checkpoint import load_tokenizer
    from training.ml.data import build_examples, split_by_prompt
    from training.ml.text import render_prompt, render_reply

    project = Project.objects.get(name=PROJECT)
    if dump is not None:  # the split stage_reward makes for this seed, for the TRL side
        out = dump / f"seed{seed}"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        shutil.copytree(reward_backbone_dir(), out / "backbone")
        tokenizer = load_tokenizer(reward_backbone_dir())
        examples = build_examples(selectors.training_judgements(project))
        split = dict(zip(("train", "val"), split_by_prompt(examples, 0.2, seed=seed)))
        for name, part in split.items():
            with (out / f"{name}.jsonl").open("w") as f:
                for e in part:
                    for better, worse, _ in e.pairs:
                        f.write(json.dumps({
                            "prompt": render_prompt(e.messages, tokenizer),
                            "chosen": render_reply(e.replies[better], tokenizer),
                            "rejected": render_reply(e.replies[worse], tokenizer),
                        }) + "\n")

    run, wall = run_here(project, "reward", {"reward": {"seed": seed}})
    m = run.metrics
    rounded = lambda key, digits=4: None if m.get(key) is None else round(m[key], digits)  # noqa: E731
    return {
        "trainer": "ours (start_run reward, defaults)",
        "backbone": backbone,
        "seed": seed,
        "train_pairs": m["train_examples"] + m.get("early_stopping_examples", 0),
        "fit_pairs": m["train_examples"],
        "early_stopping_pairs": m.get("early_stopping_examples"),
        "val_pairs": m.get("val_pairs"),
        "val_accuracy": rounded("val_accuracy"),
        "val_loss": rounded("val_loss"),
        "lr": m.get("lr"),
        "epochs_planned": m.get("epochs_planned"),
        "epochs_run": m.get("epochs_run"),
        "steps": m.get("steps"),
        "best_step": m.get("best_step"),
        "es_loss": rounded("es_loss"),
        "es_accuracy": rounded("es_accuracy"),
        "stopped_early": m.get("stopped_early"),
        "epoch_train_losses": [round(x, 4) for x in m.get("epoch_train_losses", [])],
        "train_seconds": rounded("train_seconds", 1),
        "run_wall_seconds": round(wall, 1),
        "pairs_per_second": rounded("pairs_per_second", 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=("policy", "minilm"), default="policy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--dump", type=Path, help="write each seed's split and backbone folder here (for bench/trl_rm_bench.py)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kind", choices=("reward", "dpo"), default="reward")
    parser.add_argument("--config", type=json.loads, default={}, help="extra run config (JSON object); the run then does not use the defaults")
    parser.add_argument("--stage", choices=("setup", "train"), help=argparse.SUPPRESS)  # internal: one stage in this process
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "setup":
        print(json.dumps(setup(args.workdir, args.backbone, args.data, args.threads)), flush=True)
        return
    if args.stage == "train" and args.kind == "dpo":
        print(json.dumps(train_dpo(args.workdir, args.seeds[0], args.config, args.threads)), flush=True)
        return
    if args.stage == "train":
        print(json.dumps(train(args.workdir, args.backbone, args.seeds[0], args.dump, args.threads)), flush=True)
        return
    if not isinstance(args.config, dict):
        raise SystemExit("--config must be a JSON object")
    if args.kind == "dpo" and args.backbone != "policy":
        raise SystemExit("--kind dpo trains the policy; --backbone does not apply")
    if not args.data.exists():
        raise SystemExit(f"no data at {args.data}")
    workdir = Path(tempfile.mkdtemp(prefix="hh-rm-bench-"))
    common = ["--backbone", args.backbone, "--data", str(args.data), "--threads", str(args.threads), "--workdir", str(workdir)]
    try:
        # one process sets up the database, the import and the default policy (as a user would, once);
        # a fresh process per seed trains, so that timings and peak RSS are per run
        done = subprocess.run([sys.executable, __file__, "--stage", "setup", *common], check=True, stdout=subprocess.PIPE, text=True)
        print(done.stdout.strip().splitlines()[-1], file=sys.stderr, flush=True)
        for seed in args.seeds:
            command = [sys.executable, __file__, "--stage", "train", "--seeds", str(seed), "--kind", args.kind, "--config", json.dumps(args.config), *common]
            if args.dump:
                command += ["--dump", str(args.dump)]
            subprocess.run(command, check=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
