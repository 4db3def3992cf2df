"""Celery tasks of the labeling app: the periodic quality check, and imports run by a worker."""

from celery import shared_task
from django.contrib.auth import get_user_model
from django.db.models import Max

from . import services
from .models import AnnotatorPause, Judgement, Project


@shared_task(name="labeling.tasks.check_quality")
def check_quality() -> dict:
    """Pause the annotators the thresholds flag, on every active project that asks for it
    (ProjectQualitySettings.auto_pause). An annotator whose pause an admin lifted is not
    paused again for the same judgements: only once they have judged again since the lift
    and are still flagged."""
    from .quality_data import flagged_annotators

    paused: dict[int, list[int]] = {}
    projects = list(Project.objects.filter(is_active=True, quality_settings__auto_pause=True))
    for project in projects:
        flagged = flagged_annotators(project)
        if not flagged:
            continue
        lifted = dict(
            AnnotatorPause.objects.filter(project=project, annotator_id__in=flagged, lifted_at__isnull=False)
            .values("annotator_id").annotate(at=Max("lifted_at")).values_list("annotator_id", "at")
        )
        latest = dict(
            Judgement.objects.filter(task__project=project, annotator_id__in=flagged)
            .values("annotator_id").annotate(at=Max("created_at")).values_list("annotator_id", "at")
        )
        already = set(AnnotatorPause.objects.filter(project=project, lifted_at__isnull=True).values_list("annotator_id", flat=True))
        for annotator in get_user_model().objects.filter(pk__in=flagged).exclude(pk__in=already):
            if annotator.pk in lifted and (annotator.pk not in latest or latest[annotator.pk] <= lifted[annotator.pk]):
                continue  # an admin lifted it and nothing new since
            services.pause_annotator(project=project, annotator=annotator, reason="automatic: " + "; ".join(flagged[annotator.pk]))
            paused.setdefault(project.pk, []).append(annotator.pk)
    return {"projects_checked": len(projects), "paused": paused}


@shared_task(name="labeling.tasks.run_import")
def run_import(job_id: int) -> str | None:
    """Import a stored upload (labeling/importing/jobs.py); all or nothing."""
    from .importing import jobs

    try:
        return jobs.execute_job(job_id)
    except Exception as exc:  # noqa: BLE001 - the job must not stay "running" on an unexpected error
        jobs.fail_job(job_id, f"internal error ({type(exc).__name__}): {exc}; nothing was imported")
        raise


@shared_task(name="labeling.tasks.reap_stale_imports")
def reap_stale_imports() -> dict:
    from .importing import jobs

    return {"reaped": jobs.reap_stale_imports()}
