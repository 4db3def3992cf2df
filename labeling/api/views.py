"""REST API views: thin callers of services, selectors, importing and exporting."""

import io
import os
import re
from urllib.parse import quote

from django.conf import settings
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status, viewsets
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors, services
from ..exporting import iter_export_lines
from ..exceptions import AlreadyClosed, InvalidInput
from ..importing import jobs
from ..importing.services import import_stream
from ..models import Assignment, ComparisonTask, ImportJob, Judgement, Project
from ..quality_filter import JudgementFilter
from ..models import Response as Reply
from .permissions import IsLabelingAdmin, ReadAnyWriteAdmin
from .quality_schema import QualityOutput
from .serializers import (
    AnnotatorStatsOutput,
    AssignmentOutput,
    ExportQuery,
    GoldInput,
    ImportInput,
    ImportJobOutput,
    ImportJobQuery,
    ImportReportOutput,
    JudgementAdminOutput,
    JudgementInput,
    JudgementOutput,
    JudgementQuery,
    MyStatsOutput,
    ProjectQuery,
    ProjectSerializer,
    SkipInput,
    SkipOutput,
    TaskAdminOutput,
    TaskQuery,
)


def export_disposition(project_name: str, fmt: str) -> str:
    """Content-Disposition for an export: an ASCII-safe file name, and the exact one (RFC 5987) for clients that read it."""
    # no spaces or characters file systems refuse: "Demo: assistant replies" -> "Demo-assistant-replies-trl.jsonl" (#20)
    stem = re.sub(r'[\s\\/:*?"<>|\x00-\x1f\x7f]+', "-", project_name).strip("-._") or "export"
    name = f"{stem}-{fmt}.jsonl"
    ascii_name = re.sub(r"[^A-Za-z0-9._]*[^A-Za-z0-9._-][^A-Za-z0-9._]*|-{2,}", "-", name).strip("-._") or "export.jsonl"
    exact = quote(name.encode("utf-8", "replace"), safe="")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{exact}"


def validated_query(serializer_class, request) -> dict:
    """The query parameters through `serializer_class`: a 400 naming the field and the reason otherwise."""
    query = serializer_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data


class ProjectViewSet(viewsets.ModelViewSet):
    """Projects: signed-in users read the active ones open to them (open to all or assigned
    to them); labeling admins read every project, create and edit them."""

    serializer_class = ProjectSerializer
    permission_classes = [ReadAnyWriteAdmin]
    queryset = Project.objects.all().order_by("name")
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self):
        if services.is_labeling_admin(self.request.user):
            return self.queryset.prefetch_related("annotators")
        return selectors.projects_for(self.request.user).order_by("name")


def assignment_payload(assignment: Assignment) -> dict:
    task = assignment.task
    texts = dict(Reply.objects.filter(pk__in=assignment.display_order).values_list("pk", "text"))
    n = len(assignment.display_order)
    return {
        "assignment_id": assignment.pk,
        "task_id": task.pk,
        "project_id": task.project_id,
        "expires_at": assignment.expires_at,
        "conversation": task.prompt.messages,
        "replies": [{"label": "ABCDEFGH"[i], "text": texts[rid]} for i, rid in enumerate(assignment.display_order)],
        "choices": ["A", "B", "tie", "both_bad"] if n == 2 else ["ranking", "tie", "both_bad"],
    }


class NextTaskView(APIView):
    """Lease the next task of a project (or resume the one you hold). 204 when none is left;
    403 (code `forbidden`) for a project not open to you."""

    @extend_schema(request=None, responses={200: AssignmentOutput, 204: OpenApiResponse(description="queue empty")})
    def post(self, request, project_id: int):
        project = get_object_or_404(Project, pk=project_id, is_active=True)
        assignment = services.assign_next_task(project=project, annotator=request.user)
        if assignment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        assignment = Assignment.objects.select_related("task__prompt").get(pk=assignment.pk)
        return Response(AssignmentOutput(assignment_payload(assignment)).data)


class SubmitView(APIView):
    """Submit a judgement. Idempotent: a repeat with the same idempotency_key returns the
    first judgement with status 200 and writes nothing."""

    @extend_schema(request=JudgementInput, responses={201: JudgementOutput, 200: JudgementOutput})
    def post(self, request, assignment_id: int):
        payload = JudgementInput(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        judgement, created = services.submit_judgement(
            annotator=request.user,
            assignment_id=assignment_id,
            judgement=services.JudgementInput(
                choice=data["choice"],
                strength=data.get("strength"),
                ranks=data.get("ranks"),
                rationale=data.get("rationale", ""),
                flags=tuple(data.get("flags", ())),
                time_spent_ms=data.get("time_spent_ms"),
                idempotency_key=data.get("idempotency_key", ""),
                reply_flags=data.get("reply_flags"),
            ),
        )
        return Response(JudgementOutput(judgement).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class SkipView(APIView):
    """Give a leased task back; you will not be served it again."""

    @extend_schema(request=SkipInput, responses={200: SkipOutput})
    def post(self, request, assignment_id: int):
        payload = SkipInput(data=request.data)
        payload.is_valid(raise_exception=True)
        assignment = services.skip_task(
            annotator=request.user, assignment_id=assignment_id, reason=payload.validated_data.get("reason", "")
        )
        return Response({"assignment_id": assignment.pk, "state": assignment.state})


class MyStatsView(APIView):
    """Your own progress per project and your totals (judgements, skips, mean time; gold
    figures are for labeling admins: a change after a submit would tell a gold task apart)."""

    @extend_schema(responses=MyStatsOutput)
    def get(self, request):
        totals = selectors.annotator_stats(annotator=request.user)
        body = {
            "username": request.user.username,
            "projects": selectors.annotator_progress(annotator=request.user),
            "totals": totals[0] if totals else None,
        }
        return Response(MyStatsOutput(body).data)


class TaskListView(generics.ListAPIView):
    """Comparison tasks (admins). Filters: project, status, is_gold."""

    permission_classes = [IsLabelingAdmin]
    serializer_class = TaskAdminOutput

    @extend_schema(parameters=[TaskQuery])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        queryset = ComparisonTask.objects.select_related("prompt").prefetch_related("task_responses__response").order_by("pk")
        filters = validated_query(TaskQuery, self.request)
        if "project" in filters:
            queryset = queryset.filter(project_id=filters["project"])
        if filters.get("status"):
            queryset = queryset.filter(status=filters["status"])
        if filters.get("is_gold") is not None:
            queryset = queryset.filter(is_gold=filters["is_gold"])
        return queryset


class TaskGoldView(APIView):
    """Make a task a gold task (`gold_response`: the id of the reply a careful annotator must
    prefer) or, with null, a regular task again; its judgements are re-marked."""

    permission_classes = [IsLabelingAdmin]

    @extend_schema(request=GoldInput, responses={200: TaskAdminOutput, 400: OpenApiResponse(description="not one of the task's replies"),
                                                  404: OpenApiResponse(description="no such task")})
    def patch(self, request, task_id: int):
        payload = GoldInput(data=request.data)
        payload.is_valid(raise_exception=True)
        task = services.set_gold(task_id=task_id, response_id=payload.validated_data["gold_response"])
        task = ComparisonTask.objects.select_related("prompt").prefetch_related("task_responses__response").get(pk=task.pk)
        return Response(TaskAdminOutput(task).data)


class JudgementListView(generics.ListAPIView):
    """Judgements (admins). Filters: project, task, annotator (username), since / until (dates)."""

    permission_classes = [IsLabelingAdmin]
    serializer_class = JudgementAdminOutput

    @extend_schema(parameters=[JudgementQuery])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        filters = validated_query(JudgementQuery, self.request)
        queryset = Judgement.objects.select_related("annotator", "task").order_by("pk")
        if "project" in filters:
            queryset = queryset.filter(task__project_id=filters["project"])
        if "task" in filters:
            queryset = queryset.filter(task_id=filters["task"])
        if filters.get("annotator"):
            queryset = queryset.filter(annotator__username=filters["annotator"])
        since, until = selectors.day_window(filters.get("since"), filters.get("until"))
        if since:
            queryset = queryset.filter(created_at__gte=since)
        if until:
            queryset = queryset.filter(created_at__lt=until)
        return queryset


class ImportView(APIView):
    """Upload a file to import (admins). All or nothing unless skip_invalid. A file up to
    IMPORT_INLINE_MAX_BYTES imports in the request (201 and the report); a larger one, or
    background=true, is stored and imported by a worker (202 and the job, whose URL is in
    Location: poll it for progress, the ETA and the report)."""

    permission_classes = [IsLabelingAdmin]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request={"multipart/form-data": ImportInput},
        responses={201: ImportReportOutput, 202: ImportJobOutput},
    )
    def post(self, request, project_id: int):
        project = get_object_or_404(Project, pk=project_id)
        payload = ImportInput(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        upload = data["file"]
        size = upload.size or 0
        jobs.check_options(fmt=data["format"], with_labels=data["with_labels"], size=size)
        background = data["background"]
        if background is None:
            background = size > settings.IMPORT_INLINE_MAX_BYTES
        elif not background and size > settings.IMPORT_INLINE_MAX_BYTES:
            raise InvalidInput(
                f"a file over {settings.IMPORT_INLINE_MAX_BYTES:,} bytes (IMPORT_INLINE_MAX_BYTES) is imported by a worker: "
                "leave background out or set it to true", field="background",
            )
        if background:
            job = jobs.create_job(
                project=project, upload=upload, fmt=data["format"], with_labels=data["with_labels"],
                skip_invalid=data["skip_invalid"], pairs_per_prompt=data["pairs_per_prompt"], requested_by=request.user,
            )
            response = Response(ImportJobOutput(job).data, status=status.HTTP_202_ACCEPTED)
            response["Location"] = reverse("api-import-job", args=[job.pk])
            return response
        upload.seek(0)
        stream = upload.file if hasattr(upload.file, "readline") else io.BytesIO(upload.read())
        report = import_stream(
            project=project,
            stream=stream,
            fmt=data["format"],
            source=os.path.basename(upload.name or "upload"),
            with_labels=data["with_labels"],
            skip_invalid=data["skip_invalid"],
            pairs_per_prompt=data["pairs_per_prompt"],
        )
        return Response(report.as_dict(), status=status.HTTP_201_CREATED)


class ImportJobListView(generics.ListAPIView):
    """Imports run by a worker, newest first (admins). Filters: project, status."""

    permission_classes = [IsLabelingAdmin]
    serializer_class = ImportJobOutput

    @extend_schema(parameters=[ImportJobQuery])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        options = validated_query(ImportJobQuery, self.request)
        jobs_ = ImportJob.objects.select_related("requested_by")
        if "project" in options:
            jobs_ = jobs_.filter(project_id=options["project"])
        if "status" in options:
            jobs_ = jobs_.filter(status=options["status"])
        return jobs_


class ImportJobView(generics.RetrieveAPIView):
    """One import run by a worker: its status, progress, ETA and, once it ended, its report (admins)."""

    permission_classes = [IsLabelingAdmin]
    serializer_class = ImportJobOutput
    queryset = ImportJob.objects.select_related("requested_by")
    lookup_url_kwarg = "job_id"


class ImportJobCancelView(APIView):
    """Cancel an import (admins): a queued one at once, a running one rolls back at its next
    batch (poll the job). 409 when it already ended."""

    permission_classes = [IsLabelingAdmin]

    @extend_schema(request=None, responses={202: ImportJobOutput})
    def post(self, request, job_id: int):
        job = get_object_or_404(ImportJob, pk=job_id)
        if job.finished:
            raise AlreadyClosed(f"the import already ended ({job.status})")
        job = jobs.request_cancel(job)
        return Response(ImportJobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class ExportView(APIView):
    """Download training data as JSON Lines, streamed (admins)."""

    permission_classes = [IsLabelingAdmin]

    @extend_schema(parameters=[ExportQuery], responses={(200, "application/x-ndjson"): OpenApiTypes.STR})
    def get(self, request, project_id: int):
        project = get_object_or_404(Project, pk=project_id)
        options = validated_query(ExportQuery, request)
        since, until = selectors.day_window(options.get("since"), options.get("until"))
        lines = iter_export_lines(
            project=project,
            fmt=options["format"],
            aggregate=options["aggregate"],
            since=since,
            until=until,
            annotator=options.get("annotator"),
            quality=JudgementFilter(
                exclude_paused=options["exclude_paused"], exclude_flagged=options["exclude_flagged"],
                exclude_failed_gold=options["exclude_failed_gold"], min_task_agreement=options.get("min_task_agreement"),
            ),
            include_simulated=options["include_simulated"],
        )
        response = StreamingHttpResponse(lines, content_type="application/x-ndjson")
        response["Content-Disposition"] = export_disposition(project.name, options["format"])
        return response


class AnnotatorStatsView(APIView):
    """Per-annotator statistics (admins). Filter: project."""

    permission_classes = [IsLabelingAdmin]

    @extend_schema(parameters=[ProjectQuery], responses=AnnotatorStatsOutput(many=True))
    def get(self, request):
        filters = validated_query(ProjectQuery, request)
        project = get_object_or_404(Project, pk=filters["project"]) if "project" in filters else None
        return Response(AnnotatorStatsOutput(selectors.annotator_stats(project=project), many=True).data)


class QualityView(APIView):
    """Agreement figures of a project (admins): the numbers of the quality page."""

    permission_classes = [IsLabelingAdmin]

    @extend_schema(responses={200: QualityOutput})
    def get(self, request, project_id: int):
        from ..quality_data import quality_report

        project = get_object_or_404(Project, pk=project_id)
        return Response(quality_report(project))
