"""Import prompts, replies (and optionally given preferences) into a project.

One transaction per import: by default one invalid line rejects the whole file and the
error lists every bad line (the first 100) with its number and reason. With
skip_invalid the valid lines are imported and the invalid ones reported. Re-importing
a file is a no-op: prompts, replies and tasks are keyed by content hashes.

Records are written in batches (bulk inserts) while the file streams, so a file of
100,000 lines never sits in memory whole.

Imported labels (--with-labels) are stored as judgements of an inactive pseudo-annotator
named `imported:<format>`. They do not count toward a task's overlap k, which counts
judgements wanted from people.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from itertools import combinations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connection, transaction

from ..exceptions import ImportFailed, InvalidInput
from ..models import (
    Choice,
    ComparisonTask,
    Judgement,
    JudgementSource,
    Project,
    Prompt,
    Response,
    TaskResponse,
)
from .formats import FORMATS, PROMPTS_FORMAT, REPLIES_FORMAT, ImportRecord, RecordError, batched, iter_records, response_set_hash, text_hash

log = logging.getLogger(__name__)

BATCH_SIZE = 500
SOURCE_CHARS = Prompt._meta.get_field("source").max_length
MAX_REPORTED_ERRORS = 100
LABELLED_FORMATS = ("hh", "trl")


@dataclass
class ImportReport:
    lines_with_items: int = 0
    prompts_created: int = 0
    responses_created: int = 0
    tasks_created: int = 0
    tasks_already_present: int = 0
    labels_created: int = 0
    gold_tasks_created: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    skipped_count: int = 0

    def as_dict(self) -> dict:
        return {
            "lines_with_items": self.lines_with_items,
            "prompts_created": self.prompts_created,
            "responses_created": self.responses_created,
            "tasks_created": self.tasks_created,
            "tasks_already_present": self.tasks_already_present,
            "labels_created": self.labels_created,
            "gold_tasks_created": self.gold_tasks_created,
            "skipped_count": self.skipped_count,
            "skipped": [{"line": line, "reason": reason} for line, reason in self.skipped],
        }


def pseudo_annotator(fmt: str):
    """The inactive account that owns labels imported from a `fmt` file."""
    user, created = get_user_model().objects.get_or_create(
        username=f"imported:{fmt}", defaults={"is_active": False}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def _write_batch(project: Project, records: list[ImportRecord], source: str, labeller, report: ImportReport):
    # 1. prompts, keyed by the hash of the conversation
    hashes = {record.prompt_hash for record in records}
    prompts = {p.content_hash: p for p in Prompt.objects.filter(project=project, content_hash__in=hashes)}
    new_prompts = []
    for record in records:
        if record.prompt_hash not in prompts:
            prompt = Prompt(
                project=project,
                messages=record.messages,
                source_format=record.source_format,
                source=source,
                metadata=record.metadata,
                content_hash=record.prompt_hash,
            )
            prompts[record.prompt_hash] = prompt
            new_prompts.append(prompt)
    Prompt.objects.bulk_create(new_prompts)
    report.prompts_created += len(new_prompts)

    # 2. replies, keyed by (prompt, hash of the text)
    prompt_ids = {p.pk for p in prompts.values()}
    responses = {
        (r.prompt_id, r.text_hash): r for r in Response.objects.filter(prompt_id__in=prompt_ids)
    }
    new_responses = []
    for record in records:
        prompt = prompts[record.prompt_hash]
        for position, text in enumerate(record.responses):
            key = (prompt.pk, text_hash(text))
            if key not in responses:
                # its source: the model the file names for it, else the file (a reply two models wrote alike keeps the first)
                origin = (record.sources[position] if position < len(record.sources) else None) or source
                response = Response(prompt=prompt, text=text, text_hash=key[1], origin=origin)
                responses[key] = response
                new_responses.append(response)
    Response.objects.bulk_create(new_responses)
    report.responses_created += len(new_responses)

    # 3. tasks, keyed by the set of replies they compare
    def set_hash(record: ImportRecord) -> str:
        return response_set_hash(record.prompt_hash, [text_hash(t) for t in record.responses])

    set_hashes = {set_hash(record) for record in records}
    tasks = {
        t.response_set_hash: t
        for t in ComparisonTask.objects.filter(project=project, response_set_hash__in=set_hashes)
    }
    report.tasks_already_present += sum(1 for record in records if set_hash(record) in tasks)
    new_tasks, task_records = [], []
    for record in records:
        key = set_hash(record)
        if key not in tasks:
            task = ComparisonTask(project=project, prompt=prompts[record.prompt_hash], response_set_hash=key)
            if record.gold is not None:  # a gold task and its expected answer (a task already there stays as it is)
                task.is_gold = True
                task.gold_response = responses[(task.prompt_id, text_hash(record.responses[record.gold]))]
                report.gold_tasks_created += 1
            tasks[key] = task
            new_tasks.append(task)
            task_records.append(record)
    ComparisonTask.objects.bulk_create(new_tasks)
    TaskResponse.objects.bulk_create(
        TaskResponse(task=task, response=responses[(task.prompt_id, text_hash(text))], position=position)
        for task, record in zip(new_tasks, task_records)
        for position, text in enumerate(record.responses)
    )
    report.tasks_created += len(new_tasks)

    # 4. given preferences: responses[0] was chosen over responses[1]
    if labeller is None:
        return
    labelled = {set_hash(r): r for r in records if r.labelled}
    already = set(
        Judgement.objects.filter(
            annotator=labeller, task_id__in=[tasks[k].pk for k in labelled]
        ).values_list("task_id", flat=True)
    )
    new_labels = []
    for key, record in labelled.items():
        task = tasks[key]
        if task.pk in already:
            continue
        chosen, rejected = (responses[(task.prompt_id, text_hash(t))].pk for t in record.responses[:2])
        new_labels.append(
            Judgement(
                task=task,
                annotator=labeller,
                choice=Choice.A,
                ranking=[[chosen], [rejected]],
                display_order=[chosen, rejected],
                source=JudgementSource.IMPORT,
            )
        )
    Judgement.objects.bulk_create(new_labels)
    report.labels_created += len(new_labels)


def import_stream(
    *,
    project: Project,
    stream: io.BufferedIOBase,
    fmt: str,
    source: str = "",
    with_labels: bool = False,
    skip_invalid: bool = False,
    on_progress: Callable[[int], None] | None = None,
    pairs_per_prompt: int | None = None,
) -> ImportReport:
    """Import a binary stream in format `fmt`; raise ImportFailed and change nothing on error.
    on_progress(n) is told of every n more bytes read (after each batch)."""
    steps = import_steps(
        project=project, stream=stream, fmt=fmt, source=source, with_labels=with_labels, skip_invalid=skip_invalid,
        pairs_per_prompt=pairs_per_prompt,
    )
    reported = 0
    while True:
        try:
            read = next(steps)
        except StopIteration as done:
            return done.value
        if on_progress and read > reported:
            on_progress(read - reported)
            reported = read


def import_steps(
    *,
    project: Project,
    stream: io.BufferedIOBase,
    fmt: str,
    source: str = "",
    with_labels: bool = False,
    skip_invalid: bool = False,
    pairs_per_prompt: int | None = None,
    seed: int = 0,
) -> Generator[int, None, ImportReport]:
    """import_stream, one batch at a time: yields the bytes read so far after each batch
    (for a progress bar) and returns the report. The transaction spans the whole import,
    so a caller that stops early (closes the generator, a client gone) imports nothing.
    Format "replies": `pairs_per_prompt` samples that many pairs of models per prompt
    (seeded), instead of every pair."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", field="format")
    if with_labels and fmt not in LABELLED_FORMATS:
        raise InvalidInput(
            f"--with-labels needs a format that carries a preference ({', '.join(LABELLED_FORMATS)})",
            field="with_labels",
        )
    report = ImportReport()
    errors: list[tuple[int, str]] = []
    read = 0
    source = source[:SOURCE_CHARS]  # a file name of any length (Prompt.source holds 200)

    def valid_records():
        nonlocal read
        for line, item, consumed in iter_records(
            stream, fmt, max_responses=project.max_responses, max_line_bytes=settings.IMPORT_MAX_LINE_BYTES
        ):
            read += consumed or 0
            report.lines_with_items += 1
            if isinstance(item, RecordError):
                report.skipped_count += 1
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append((line, str(item)))
                continue
            if errors and not skip_invalid:
                continue  # the import will be rejected: keep reading only to report errors
            yield item

    with transaction.atomic():
        labeller = pseudo_annotator(fmt) if with_labels else None
        records = valid_records()
        if fmt == REPLIES_FORMAT:  # one reply per line: read them all, then pair each prompt's replies
            grouped = yield from _grouped_replies(records, lambda: read, errors, report)
            records = iter(paired_records(grouped, pairs_per_prompt, seed))
        for number, batch in enumerate(batched(records, BATCH_SIZE), 1):
            if not (errors and not skip_invalid):
                _write_batch(project, batch, source, labeller, report)
                if number in ANALYZE_AFTER_BATCHES:
                    _analyze()
            yield read
        if errors and not skip_invalid:
            raise ImportFailed(errors, total_errors=report.skipped_count)
        if report.lines_with_items == 0:
            raise ImportFailed([(0, "the file holds no items")])
    report.skipped = errors
    return report


# PostgreSQL plans each batch's "which of these already exist?" lookups from the tables'
# statistics, which know nothing of the rows this import wrote (its transaction is not
# committed): without them it scanned every row of the project per batch, and a
# 1,000,000-line import slowed from 2,000 to 700 lines/s. ANALYZE inside the transaction
# counts its own new rows; a few times, ever further apart, keeps the plans on the indexes
# (well under a second each). ANALYZE's lock (held to the end of the import) only conflicts
# with another ANALYZE or VACUUM: when another import holds it, this one goes on without.
ANALYZE_AFTER_BATCHES = {2, 8, 32, 128, 512, 2048}
ANALYZED_TABLES = (Prompt, Response, ComparisonTask, TaskResponse)


def _analyze() -> None:
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        (previous,) = cursor.fetchone()
        try:
            with transaction.atomic():  # a savepoint: a lock wait that times out undoes only this
                cursor.execute("SET LOCAL lock_timeout = '200ms'")
                for model in ANALYZED_TABLES:
                    cursor.execute(f'ANALYZE "{model._meta.db_table}"')
        except DatabaseError as error:
            log.info("import: statistics not refreshed (%s)", error)
        finally:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [previous])


def _grouped_replies(records, read, errors: list, report: ImportReport):
    """Format "replies": {prompt hash: {model: record}}, reading every line (yielding the bytes
    read after each BATCH_SIZE lines, for the progress bar). A model that answers one prompt
    twice is a bad line."""
    grouped: dict[str, dict[str, ImportRecord]] = {}
    for count, record in enumerate(records, 1):
        replies = grouped.setdefault(record.prompt_hash, {})
        model = record.sources[0]
        if model in replies:
            report.skipped_count += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append((record.line, f"model {model!r} already answered this prompt on line {replies[model].line}"))
            continue
        replies[model] = record
        if count % BATCH_SIZE == 0:
            yield read()
    return grouped


def paired_records(grouped: dict[str, dict[str, ImportRecord]], pairs_per_prompt: int | None, seed: int) -> list[ImportRecord]:
    """Each prompt's replies as two-reply records: every pair of its models (by name), or a
    seeded sample of `pairs_per_prompt` of them. A pair whose two replies are the same text is
    left out (nothing to compare)."""
    out = []
    rng = random.Random(seed)
    for replies in grouped.values():
        models = sorted(replies)
        pairs = list(combinations(models, 2))
        if pairs_per_prompt is not None and len(pairs) > pairs_per_prompt:
            pairs = rng.sample(pairs, pairs_per_prompt)
        for a, b in pairs:
            first, second = replies[a], replies[b]
            if first.responses[0] == second.responses[0]:
                continue
            out.append(ImportRecord(
                line=first.line, messages=first.messages, responses=[first.responses[0], second.responses[0]],
                source_format=first.source_format, metadata=first.metadata, sources=[a, b],
            ))
    return out


def import_prompts(*, project: Project, stream: io.BufferedIOBase, source: str, max_prompts: int) -> list[int]:
    """A prompts-only file (JSON Lines of {"prompt"} or {"messages"}) into the project's
    prompts: their ids in file order, duplicates once. All or nothing: ImportFailed lists
    every bad line (the first 100) and nothing is written."""
    errors: list[tuple[int, str]] = []
    records: list[ImportRecord] = []
    total_errors = 0
    for line, item, _ in iter_records(stream, PROMPTS_FORMAT, max_responses=2, max_line_bytes=settings.IMPORT_MAX_LINE_BYTES):
        if isinstance(item, RecordError):
            total_errors += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append((line, str(item)))
        elif len(records) < max_prompts:
            records.append(item)
        else:
            total_errors += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append((line, f"more than {max_prompts} prompts in one file"))
    if errors:
        raise ImportFailed(errors, total_errors=total_errors)
    if not records:
        raise ImportFailed([(0, "the file holds no prompts")])
    ids: dict[str, int] = {}
    with transaction.atomic():
        existing = dict(Prompt.objects.filter(project=project, content_hash__in={r.prompt_hash for r in records}).values_list("content_hash", "pk"))
        for record in records:
            digest = record.prompt_hash
            if digest not in ids:
                if digest not in existing:
                    existing[digest] = Prompt.objects.create(
                        project=project, messages=record.messages, source_format=record.source_format, source=source[:SOURCE_CHARS],
                        metadata=record.metadata, content_hash=digest,
                    ).pk
                ids[digest] = existing[digest]
    return list(ids.values())
