import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from labeling.exceptions import ImportFailed, LabelingError
from labeling.models import Project
from training.models import ACTIVE_RUN_STATUSES, RunKind, RunStatus
from training.selectors import eta_seconds
from training.endpoint_runs import start_endpoint_run
from training.services import start_run


class Command(BaseCommand):
    help = "Start a run (reward, ppo, dpo, rloo, grpo, sft, generate, cycle, endpoints) on the worker; --wait follows it to the end."

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=RunKind.values)
        parser.add_argument("--project", required=True)
        parser.add_argument("--config", help="JSON object, e.g. '{\"ppo\": {\"steps\": 20}}'")
        parser.add_argument("--prompts-file", help="kind endpoints: a prompts-only JSON Lines file whose prompts the endpoints answer")
        parser.add_argument("--wait", action="store_true", help="show a progress bar and print the final metrics as JSON")
        parser.add_argument("--timeout", type=float, default=0, help="with --wait: give up after this many seconds")

    def handle(self, *args, kind, project, config, wait, timeout, prompts_file, **options):
        project_obj = Project.objects.filter(name=project).first()
        if project_obj is None:
            raise CommandError(f"no project named {project!r}")
        try:
            config_obj = json.loads(config) if config else {}
        except json.JSONDecodeError as exc:
            raise CommandError(f"--config is not valid JSON: {exc}") from exc
        if prompts_file and kind != RunKind.ENDPOINTS:
            raise CommandError("--prompts-file goes with kind endpoints")
        try:
            if kind == RunKind.ENDPOINTS:
                run = self._start_endpoint_run(project_obj, config_obj, prompts_file)
            else:
                run = start_run(project=project_obj, kind=kind, config=config_obj)
        except ImportFailed as error:
            lines = "\n".join(f"  line {line}: {reason}" for line, reason in error.errors)
            raise CommandError(f"{prompts_file}: nothing was imported and no run started:\n{lines}") from error
        except LabelingError as error:
            raise CommandError(error.message) from error
        self.stderr.write(f"{kind} run {run.pk} queued")
        if not wait:
            self.stdout.write(str(run.pk))
            return
        started = time.monotonic()
        with tqdm(total=100, desc=f"{kind} run {run.pk}", unit="%", file=self.stderr._out) as bar:
            while True:
                run.refresh_from_db()
                bar.n = round(run.progress * 100)
                eta = eta_seconds(run)
                bar.set_postfix(status=run.status, eta="?" if eta is None else f"{eta:.0f}s")
                bar.refresh()
                if run.status not in ACTIVE_RUN_STATUSES:
                    break
                if timeout and time.monotonic() - started > timeout:
                    raise CommandError(f"run {run.pk} still {run.status} after {timeout:.0f} s")
                time.sleep(0.5)
        if run.status != RunStatus.SUCCEEDED:
            raise CommandError(f"run {run.pk} {run.status}: {run.error or run.log_tail}")
        self.stdout.write(json.dumps(run.metrics, indent=2))

    @staticmethod
    def _start_endpoint_run(project, config: dict, prompts_file: str | None):
        if not prompts_file:
            return start_endpoint_run(project=project, config=config)
        try:
            with open(prompts_file, "rb") as stream:
                return start_endpoint_run(project=project, config=config, prompts_file=stream, source=Path(prompts_file).name)
        except OSError as error:
            raise CommandError(f"cannot read {prompts_file}: {error.strerror}") from error
