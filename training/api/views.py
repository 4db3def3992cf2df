"""REST endpoints for training runs and model versions (labeling admins only)."""

import io
import os

from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from labeling.api.permissions import IsLabelingAdmin
from labeling.models import Project

from .. import selectors, services
from ..endpoint_runs import start_endpoint_run
from ..models import ModelVersion, TrainingRun
from labeling.api.views import validated_query

from .serializers import (
    DefaultPolicyOutput, EndpointRunInput, PromoteInput, RollbackInput, RollbackOutput, RunOutput, RunQuery, StartRunInput, VersionOutput, VersionQuery,
)


def runs_for_output():
    """Runs with what RunOutput reads prefetched (requested_by, versions, a cycle's stages)."""
    return TrainingRun.objects.select_related("requested_by").prefetch_related(
        "versions", Prefetch("stages", queryset=TrainingRun.objects.order_by("pk"))
    )


class TrainingRunListView(generics.ListAPIView):
    """GET: runs, newest first (filter: project, kind, status). POST: start a run (202)."""

    permission_classes = [IsLabelingAdmin]
    serializer_class = RunOutput

    def get_queryset(self):
        runs = runs_for_output().order_by("-created_at")
        return runs.filter(**validated_query(RunQuery, self.request))

    @extend_schema(parameters=[RunQuery])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(request=StartRunInput, responses={202: RunOutput})
    def post(self, request):
        payload = StartRunInput(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        project = get_object_or_404(Project, pk=data["project"])
        run = services.start_run(project=project, kind=data["kind"], config=data["config"], requested_by=request.user)
        return Response(RunOutput(run).data, status=status.HTTP_202_ACCEPTED)


class TrainingRunDetailView(generics.RetrieveAPIView):
    permission_classes = [IsLabelingAdmin]
    serializer_class = RunOutput

    def get_queryset(self):
        return runs_for_output()


class CancelRunView(APIView):
    permission_classes = [IsLabelingAdmin]

    @extend_schema(request=None, responses=RunOutput)
    def post(self, request, pk: int):
        run = services.cancel_run(run=get_object_or_404(TrainingRun, pk=pk))
        return Response(RunOutput(run).data)


class ModelVersionListView(generics.ListAPIView):
    """Model versions (filter: project, kind, status)."""

    permission_classes = [IsLabelingAdmin]
    serializer_class = VersionOutput

    def get_queryset(self):
        return selectors.versions_for().filter(**validated_query(VersionQuery, self.request))

    @extend_schema(parameters=[VersionQuery])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class PromoteVersionView(APIView):
    permission_classes = [IsLabelingAdmin]

    """Make a version the active one. One the promotion gate refused (`gate_refused`) needs
    {"override": true}; its note then records who overrode the gate."""

    @extend_schema(request=PromoteInput, responses=VersionOutput)
    def post(self, request, pk: int):
        payload = PromoteInput(data=request.data)
        payload.is_valid(raise_exception=True)
        version = services.promote_version(version=get_object_or_404(ModelVersion, pk=pk), by=request.user,
                                           override=payload.validated_data["override"])
        return Response(VersionOutput(version).data)


class DefaultPolicyView(APIView):
    """The built-in default policy: ready, being built (with progress and an ETA), failed or
    missing. `make run` builds it in the background; runs that start from it wait for it."""

    permission_classes = [IsLabelingAdmin]

    @extend_schema(responses=DefaultPolicyOutput)
    def get(self, request):
        from ..defaults import default_policy_state

        return Response(DefaultPolicyOutput(default_policy_state()).data)


class RollbackView(APIView):
    """Step the active version of a kind back (to: previous), or put the project back on
    the built-in default policy (kind: policy, to: builtin)."""

    permission_classes = [IsLabelingAdmin]

    @extend_schema(
        request=RollbackInput,
        responses={
            200: RollbackOutput,
            400: OpenApiResponse(description="bad input: {field: [reason]}"),
            404: OpenApiResponse(description="no such project"),
            409: OpenApiResponse(description="nothing earlier to roll back to: {code, detail}"),
        },
    )
    def post(self, request, project_id: int):
        payload = RollbackInput(data=request.data)
        payload.is_valid(raise_exception=True)
        kind, to = payload.validated_data["kind"], payload.validated_data["to"]
        version = services.roll_back(project=get_object_or_404(Project, pk=project_id), kind=kind, to=to)
        if version is None:
            detail = "no policy version is active: PPO, SFT and generation start from the built-in default policy"
        else:
            detail = f"{version} is active again"
        body = {"kind": kind, "builtin": version is None, "active": VersionOutput(version).data if version else None, "detail": detail}
        return Response(body)


class EndpointRunView(APIView):
    """Replies of 2+ model endpoints to the project's prompts (`prompts`: how many) or to an
    uploaded prompts-only file, as comparison tasks: a run of kind "endpoints" (202). JSON or
    multipart. A bad file is a 400 listing its bad lines, and nothing is imported."""

    permission_classes = [IsLabelingAdmin]

    @extend_schema(
        request={"application/json": EndpointRunInput, "multipart/form-data": EndpointRunInput},
        responses={202: RunOutput, 400: OpenApiResponse(description="bad input or file: {code, detail, field, errors}"),
                   409: OpenApiResponse(description="such a run is already queued or running")},
    )
    def post(self, request, project_id: int):
        project = get_object_or_404(Project, pk=project_id)
        payload = EndpointRunInput(data=request.data)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        upload = data.pop("file", None)
        stream = None
        if upload is not None:
            upload.seek(0)
            stream = upload.file if hasattr(upload.file, "readline") else io.BytesIO(upload.read())
        run = start_endpoint_run(
            project=project, config=data, prompts_file=stream,
            source=os.path.basename(upload.name or "upload") if upload else "", requested_by=request.user,
        )
        return Response(RunOutput(run).data, status=status.HTTP_202_ACCEPTED)
