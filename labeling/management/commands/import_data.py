import os

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from labeling.exceptions import LabelingError
from labeling.importing.formats import FORMATS
from labeling.importing.services import import_stream
from labeling.models import Project, validate_project_name


class Command(BaseCommand):
    help = "Import prompts and replies (optionally given preferences) from a file, all or nothing."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--project", required=True, help="project name (created if missing)")
        parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
        parser.add_argument("--with-labels", action="store_true", help="hh / trl: store the given preference")
        parser.add_argument("--skip-invalid", action="store_true", help="import the valid lines, report the rest")
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument("--pairs-per-prompt", type=int, default=None, help="replies: that many pairs of models per prompt, sampled")

    def handle(self, *args, path, project, fmt, with_labels, skip_invalid, no_progress, pairs_per_prompt, **options):
        if pairs_per_prompt is not None and pairs_per_prompt < 1:
            raise CommandError("--pairs-per-prompt must be at least 1")
        if not os.path.isfile(path):
            raise CommandError(f"no such file: {path}")
        try:
            validate_project_name(project)
        except ValidationError as error:
            raise CommandError(f"--project: {' '.join(error.messages)}") from None
        if len(project) > Project._meta.get_field("name").max_length:
            raise CommandError(f"--project: at most {Project._meta.get_field('name').max_length} characters")
        project_obj, created = Project.objects.get_or_create(name=project)
        size = os.path.getsize(path)
        try:
            with open(path, "rb") as stream, tqdm(
                total=size, unit="B", unit_scale=True, desc="import", disable=no_progress, file=self.stderr._out
            ) as bar:
                report = import_stream(
                    project=project_obj,
                    stream=stream,
                    fmt=fmt,
                    source=os.path.basename(path),
                    with_labels=with_labels,
                    skip_invalid=skip_invalid,
                    on_progress=bar.update,
                    pairs_per_prompt=pairs_per_prompt,
                )
        except LabelingError as error:
            if created:
                project_obj.delete()
            lines = [f"import failed: {error.message}"]
            for line, reason in getattr(error, "errors", []):
                lines.append(f"  line {line}: {reason}")
            raise CommandError("\n".join(lines)) from error
        except BaseException:  # whatever else stops the import (Ctrl-C included): no empty project left behind
            if created:
                project_obj.delete()
            raise
        for line, reason in report.skipped:
            self.stderr.write(f"skipped line {line}: {reason}")
        if report.skipped_count > len(report.skipped):
            self.stderr.write(f"... {report.skipped_count - len(report.skipped)} more skipped lines not listed")
        summary = (
            f"{report.tasks_created} tasks, {report.prompts_created} prompts, {report.responses_created} replies, "
            f"{report.labels_created} labels imported into '{project}'; "
            f"{report.tasks_already_present} already present; {report.skipped_count} lines skipped"
        )
        self.stdout.write(self.style.SUCCESS(summary))
