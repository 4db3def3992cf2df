from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Count

from inference.models import ModelEndpoint, active_policy_key
from labeling import live
from labeling.importing.services import import_stream
from labeling.models import ComparisonTask, Project
from labeling.services import create_annotator

DEMO_FILE = Path(__file__).resolve().parents[2] / "demo_data" / "demo.jsonl"
DEMO_PROJECT = "Demo: assistant replies"
DEMO_ACCOUNTS = [
    ("demo-admin", "review-the-replies", True),
    ("annotator1", "compare-replies-1", False),
    ("annotator2", "compare-replies-2", False),
    ("annotator3", "compare-replies-3", False),
]
GUIDELINES = """\
## What makes a reply better

1. **Correct**: facts, code and arithmetic are right. A confident error is worse than a hedge.
2. **Helpful**: it answers the question that was asked, completely, without padding.
3. **Safe**: it declines dangerous requests but still helps with the safe part.
4. **Clear**: well organised; code in code blocks; lists and tables where they help.

## How to judge

- Pick **A** or **B** when one reply is better, then say how much (1 slightly .. 4 much better).
- **Tie** when both are about equally good; **both bad** when neither is acceptable.
- With three or more replies, rank them (1 = best; equal ranks for ties).
- Flag replies that are *unsafe* or *factually wrong*; add a short reason when it is not obvious.
- Skip a task only if you cannot judge it (language, expertise).

Keys with two replies: `A` `B` `T` `X` choose, `1`-`4` strength. With three or more: digits set each reply's rank in turn
(`Shift+1`-`4` the optional strength). Always: `U` `W` `O` flags, `R` reason, `Enter` submit, `S` skip, `G` these guidelines;
the legend under each task lists the keys of its kind.
"""
GOLD_EVERY = 10  # every 10th two-reply demo task becomes a gold task


class Command(BaseCommand):
    help = "Load the demo project (prompts with replies of differing quality) and demo accounts."

    def add_arguments(self, parser):
        parser.add_argument(
            "--simulated-history", action="store_true",
            help="also load a judgement history made by simulated annotators (marked as such): the policy's replies to the demo "
            "prompts ranked by word overlap with the demo's reference answers, so that a first full cycle has something to learn "
            "(runs here; needs the built-in default policy, `manage.py bootstrap_models`)",
        )

    def handle(self, *args, **options):
        with transaction.atomic():
            project, _ = Project.objects.get_or_create(
                name=DEMO_PROJECT, defaults={"guidelines": GUIDELINES, "overlap_k": 3, "gold_rate": 0.1}
            )
            with DEMO_FILE.open("rb") as stream:
                report = import_stream(project=project, stream=stream, fmt="jsonl", source="demo.jsonl")
            gold = 0
            two_reply_tasks = (
                ComparisonTask.objects.filter(project=project)
                .annotate(n=Count("task_responses"))
                .filter(n=2)
                .select_related("prompt")
                .order_by("pk")
            )
            for task in list(two_reply_tasks)[::GOLD_EVERY]:
                # position = index in the demo line's "responses"; metadata.ranking lists the best first
                best = task.prompt.metadata.get("ranking", [None])[0]
                best_reply = task.task_responses.filter(position=best).first() if best is not None else None
                if best_reply is not None and not task.is_gold:
                    task.is_gold, task.gold_response_id = True, best_reply.response_id
                    task.save(update_fields=["is_gold", "gold_response"])
                    gold += 1
            for username, password, is_admin in DEMO_ACCOUNTS:
                create_annotator(username=username, password=password, is_admin=is_admin)
        live_page = self._open_live_page(project)
        self.stdout.write(
            self.style.SUCCESS(
                f"demo project '{DEMO_PROJECT}': {report.tasks_created} new tasks "
                f"({report.tasks_already_present} already there), {gold} new gold tasks"
            )
        )
        if live_page:
            self.stdout.write(f"live page: /projects/{project.pk}/live/ (the demo's policy, served by `manage.py serve_policies`)")
        self.stdout.write("demo accounts (username / password):")
        for username, password, is_admin in DEMO_ACCOUNTS:
            self.stdout.write(f"  {username} / {password}{'  (admin)' if is_admin else ''}")
        if options["simulated_history"]:
            self._load_simulated_history(project)

    def _load_simulated_history(self, project) -> None:
        """The dashboard's "Load a simulated judgement history", run in this process."""
        from training import runner, services
        from training.exceptions import InvalidTrainingRequest, RunAlreadyActive
        from training.models import RunStatus

        try:
            run = services.start_run(project=project, kind="simulate", enqueue=False)
        except (InvalidTrainingRequest, RunAlreadyActive) as error:
            raise CommandError(f"no simulated history: {error}") from None
        runner.execute(run.pk)
        run.refresh_from_db()
        if run.status != RunStatus.SUCCEEDED:
            raise CommandError(f"the simulated history failed (run {run.pk}): {run.error.strip().splitlines()[-1] if run.error else run.status}")
        metrics = run.metrics
        self.stdout.write(self.style.SUCCESS(
            f"simulated history: {metrics['simulated_judgements']} judgements by {metrics['annotators']} simulated annotators "
            f"on {metrics['tasks_created']} tasks of {metrics['policy']}'s replies (marked as simulated); "
            "start a full cycle on the training dashboard"
        ))

    @staticmethod
    def _open_live_page(project) -> bool:
        """The demo's live page, answered by the project's active policy (the built-in
        endpoint the training app keeps; two samples of it side by side), unless an admin
        has set the page up already."""
        endpoint = ModelEndpoint.objects.filter(builtin=active_policy_key(project.pk)).first()
        rules = live.live_settings_for(project)
        if endpoint is None:
            return False
        if not rules.endpoints.exists():
            rules.enabled = True
            rules.save(update_fields=["enabled"])
            rules.endpoints.set([endpoint])
        return rules.enabled
