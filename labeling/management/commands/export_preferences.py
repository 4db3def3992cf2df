import os
import tempfile
from datetime import date

from django.core.management.base import BaseCommand, CommandError

from labeling.exceptions import LabelingError
from labeling.exporting import AGGREGATES, FORMATS, iter_export_lines
from labeling.models import Project
from labeling.quality_filter import JudgementFilter
from labeling.selectors import day_window


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError as exc:
        raise CommandError(f"not a number from 0 to 1: {value}") from exc
    if not 0 <= share <= 1:
        raise CommandError(f"not a number from 0 to 1: {value}")
    return share


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"not a date (YYYY-MM-DD): {value}") from exc


class Command(BaseCommand):
    help = "Export judgements as TRL / HH-RLHF / raw JSON Lines (written atomically)."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
        parser.add_argument("--out", required=True, help="output path ('-' for standard output)")
        parser.add_argument("--aggregate", choices=AGGREGATES, default="none")
        parser.add_argument("--since", type=_date, help="first day included")
        parser.add_argument("--until", type=_date, help="last day included")
        parser.add_argument("--annotator", help="only this annotator's judgements")
        parser.add_argument("--exclude-paused", action="store_true", help="leave out annotators paused on the project")
        parser.add_argument("--exclude-flagged", action="store_true", help="leave out annotators the quality thresholds flag")
        parser.add_argument("--exclude-failed-gold", action="store_true", help="leave out judgements that failed their gold task")
        parser.add_argument("--include-simulated", action="store_true", help="also the demo's simulated judgements (left out by default)")
        parser.add_argument("--min-task-agreement", type=_share, help="only tasks whose human judgements agree at least this much (0..1)")

    def handle(self, *args, project, fmt, out, aggregate, since, until, annotator, **options):
        project_obj = Project.objects.filter(name=project).first()
        if project_obj is None:
            raise CommandError(f"no project named {project!r}")
        since_at, until_at = day_window(since, until)
        try:
            quality = JudgementFilter(
                exclude_paused=options["exclude_paused"], exclude_flagged=options["exclude_flagged"],
                exclude_failed_gold=options["exclude_failed_gold"], min_task_agreement=options["min_task_agreement"],
            )
            lines = iter_export_lines(
                project=project_obj, fmt=fmt, aggregate=aggregate, since=since_at, until=until_at, annotator=annotator, quality=quality,
                include_simulated=options["include_simulated"],
            )
        except LabelingError as error:
            raise CommandError(f"{error.field}: {error.message}") from error
        count = 0
        if out == "-":
            for line in lines:
                self.stdout.write(line, ending="")
                count += 1
        else:
            directory = os.path.dirname(os.path.abspath(out))
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=directory, delete=False, suffix=".part") as tmp:
                for line in lines:
                    tmp.write(line)
                    count += 1
            os.replace(tmp.name, out)
        self.stderr.write(f"wrote {count} rows ({fmt}, aggregate={aggregate})")
