"""REST API of model endpoints and of a project's live page settings (labeling admins only).

The endpoints themselves and their client live in inference/; these views are thin callers
of inference.services. An endpoint's API key is write-only: answers say `has_api_key`, never
the key.
"""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from inference import services as endpoint_services
from inference.models import MAX_STOP_CHARS, MAX_STOP_SEQUENCES, ModelEndpoint

from .. import live
from ..models import LivePairing, Project, ProjectLiveSettings
from .permissions import IsLabelingAdmin
from .serializers import StrictIdField


class OptionalFloatField(serializers.FloatField):
    """A number or null; true and false are not numbers (NaN and infinity: the model's validators)."""

    def __init__(self, **kwargs):
        super().__init__(allow_null=True, required=False, **kwargs)

    def to_internal_value(self, data):
        if isinstance(data, bool):
            self.fail("invalid")
        return super().to_internal_value(data)


class EndpointInput(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    base_url = serializers.CharField(max_length=500, required=False, help_text="as the OpenAI client takes it, e.g. http://localhost:8000/v1")
    model = serializers.CharField(max_length=500, required=False)
    api_key = serializers.CharField(
        max_length=1000, required=False, allow_blank=True, write_only=True, trim_whitespace=True,
        help_text="stored encrypted, never shown again; leave out to keep the stored one",
    )
    clear_key = serializers.BooleanField(required=False, default=False, help_text="remove the stored key")
    temperature = OptionalFloatField(min_value=0.0, max_value=2.0)
    top_p = OptionalFloatField(min_value=0.0, max_value=1.0)
    max_tokens = serializers.IntegerField(min_value=1, max_value=32768, allow_null=True, required=False)
    stop = serializers.ListField(
        child=serializers.CharField(max_length=MAX_STOP_CHARS, trim_whitespace=False), max_length=MAX_STOP_SEQUENCES, required=False
    )
    system_prompt = serializers.CharField(max_length=20000, allow_blank=True, required=False, trim_whitespace=False)
    timeout_seconds = serializers.FloatField(min_value=1.0, max_value=600.0, required=False)
    concurrency = serializers.IntegerField(min_value=1, max_value=256, required=False)
    is_active = serializers.BooleanField(required=False)


class EndpointOutput(serializers.ModelSerializer):
    has_api_key = serializers.BooleanField(read_only=True)
    stop = serializers.ListField(child=serializers.CharField(), help_text="up to 4 stop sequences")
    base_url = serializers.SerializerMethodField()

    class Meta:
        model = ModelEndpoint
        fields = [
            "id", "name", "base_url", "model", "has_api_key", "temperature", "top_p", "max_tokens", "stop", "system_prompt",
            "timeout_seconds", "concurrency", "is_active", "builtin", "model_version_id", "last_test_at", "last_test_ok",
            "last_test_message", "created_at", "updated_at",
        ]

    def get_base_url(self, endpoint: ModelEndpoint) -> str:
        return endpoint.spec_base_url


class EndpointTestOutput(serializers.Serializer):
    ok = serializers.BooleanField()
    latency_ms = serializers.IntegerField(allow_null=True)
    message = serializers.CharField()
    reply = serializers.CharField(allow_blank=True)


def _save(request, endpoint=None) -> ModelEndpoint:
    payload = EndpointInput(data=request.data, partial=endpoint is not None)
    payload.is_valid(raise_exception=True)
    values = dict(payload.validated_data)
    api_key, clear_key = values.pop("api_key", None), values.pop("clear_key", False)
    if endpoint is None:
        missing = [field for field in ("name", "base_url", "model") if not values.get(field)]
        if missing:
            raise serializers.ValidationError({field: ["This field is required."] for field in missing})
    return endpoint_services.save_endpoint(endpoint=endpoint, values=values, api_key=api_key or None, clear_key=clear_key)


class EndpointListView(APIView):
    """GET: every model endpoint (built-in ones included). POST: register one (201)."""

    permission_classes = [IsLabelingAdmin]

    @extend_schema(responses=EndpointOutput(many=True))
    def get(self, request):
        return Response(EndpointOutput(ModelEndpoint.objects.all(), many=True).data)

    @extend_schema(request=EndpointInput, responses={201: EndpointOutput, 400: OpenApiResponse(description="{field: [reason]} or {code, detail, field}")})
    def post(self, request):
        return Response(EndpointOutput(_save(request)).data, status=status.HTTP_201_CREATED)


class EndpointDetailView(APIView):
    """GET one endpoint; PATCH changes it (a built-in one: its sampling defaults, timeout, concurrency, on/off)."""

    permission_classes = [IsLabelingAdmin]

    @extend_schema(responses=EndpointOutput)
    def get(self, request, pk: int):
        return Response(EndpointOutput(get_object_or_404(ModelEndpoint, pk=pk)).data)

    @extend_schema(request=EndpointInput, responses=EndpointOutput)
    def patch(self, request, pk: int):
        return Response(EndpointOutput(_save(request, get_object_or_404(ModelEndpoint, pk=pk))).data)


class EndpointTestView(APIView):
    """Send one short request now: the latency, or the exact error (200 either way)."""

    permission_classes = [IsLabelingAdmin]

    @extend_schema(request=None, responses=EndpointTestOutput)
    def post(self, request, pk: int):
        result = endpoint_services.probe_endpoint(endpoint=get_object_or_404(ModelEndpoint, pk=pk))
        return Response(EndpointTestOutput(result.__dict__).data)


class LiveSettingsSerializer(serializers.ModelSerializer):
    endpoints = StrictIdField(many=True, required=False, queryset=ModelEndpoint.objects.all())
    pairing = serializers.ChoiceField(choices=LivePairing.choices, required=False)

    class Meta:
        model = ProjectLiveSettings
        fields = ["enabled", "endpoints", "pairing", "max_turns", "max_prompt_chars", "max_tokens", "turns_per_hour", "reveal_sources"]


class LiveSettingsView(APIView):
    """A project's live chat-and-compare settings: which endpoints answer, how they are
    paired, the limits per annotator, whether sources are revealed after the vote."""

    permission_classes = [IsLabelingAdmin]

    @extend_schema(responses=LiveSettingsSerializer)
    def get(self, request, project_id: int):
        return Response(LiveSettingsSerializer(live.live_settings_for(get_object_or_404(Project, pk=project_id))).data)

    @extend_schema(request=LiveSettingsSerializer, responses=LiveSettingsSerializer)
    def patch(self, request, project_id: int):
        rules = live.live_settings_for(get_object_or_404(Project, pk=project_id))
        payload = LiveSettingsSerializer(rules, data=request.data, partial=True)
        payload.is_valid(raise_exception=True)
        payload.save()
        return Response(payload.data)
