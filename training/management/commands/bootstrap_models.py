import os
import shutil
import time

from django.core.management.base import BaseCommand
from tqdm import tqdm

from training.defaults import build_status_path, default_policy_dir, demo_demonstrations, project_corpus, write_build_status
from training.ml.bootstrap import DefaultModelConfig, build_default_policy
from training.ml.hooks import TrainerHooks


class Command(BaseCommand):
    help = (
        "Build the small built-in default policy (a BPE tokenizer trained on the project's text and a "
        "GPT-2-style model fine-tuned on the demo demonstrations) unless a policy folder already exists."
    )

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="rebuild, replacing the existing folder")
        parser.add_argument("--epochs", type=int, default=6)
        parser.add_argument("--layers", type=int, default=4)
        parser.add_argument("--width", type=int, default=256)
        parser.add_argument("--vocab", type=int, default=4096)
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, force, epochs, layers, width, vocab, no_progress, **options):
        target = default_policy_dir()
        if (target / "config.json").exists() and not force:
            self.stdout.write(f"policy already at {target}; nothing to do (--force rebuilds)")
            return
        config = DefaultModelConfig(vocab_size=vocab, n_layer=layers, n_embd=width, n_head=max(1, width // 64))
        bar = tqdm(desc="bootstrap SFT", unit="step", disable=no_progress, file=self.stderr._out)
        started = time.time()
        write_build_status(state="building", step=0, total_steps=0, started_at=started, pid=os.getpid())

        def progress(metrics):
            bar.total = metrics["total_steps"]
            bar.n = metrics["step"]
            bar.set_postfix(loss=f"{metrics.get('loss') or metrics.get('train_loss') or 0:.3f}")
            bar.refresh()
            write_build_status(state="building", step=metrics["step"], total_steps=metrics["total_steps"], started_at=started, pid=os.getpid())

        # built beside the target and renamed into place: a build that dies leaves no half a policy
        building = target.with_name(target.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        try:
            result = build_default_policy(
                corpus=project_corpus(),
                demonstrations=demo_demonstrations(),
                out_dir=building,
                config=config,
                sft_epochs=epochs,
                hooks=TrainerHooks(on_progress=progress),
            )
            if target.exists():
                shutil.rmtree(target)
            os.replace(building, target)
        except BaseException as error:
            write_build_status(state="failed", started_at=started, error=f"{type(error).__name__}: {error}"[:300], pid=os.getpid())
            shutil.rmtree(building, ignore_errors=True)
            raise
        bar.close()
        build_status_path().unlink(missing_ok=True)
        self.stdout.write(
            self.style.SUCCESS(
                f"default policy written to {target} ({result['steps']} SFT steps in {result['train_seconds']:.0f} s, "
                f"final loss {result['train_loss']:.3f})"
            )
        )
