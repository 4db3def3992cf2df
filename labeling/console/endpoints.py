"""Model endpoints (register, change, test) and a project's live page settings.

Thin callers of inference.services. The API key field is a password input that is never
filled in: leave it empty to keep the stored key; the page says only whether one is stored.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from inference import services as endpoint_services
from inference.exceptions import InvalidEndpoint
from inference.models import MAX_STOP_SEQUENCES, ModelEndpoint

from .. import live
from ..models import Project, ProjectLiveSettings
from .common import labeling_admin_required


class EndpointForm(forms.ModelForm):
    api_key = forms.CharField(
        required=False, max_length=1000, strip=True, label="API key",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="stored encrypted and never shown again; leave empty to keep the stored key",
    )
    clear_key = forms.BooleanField(required=False, label="Remove the stored key")
    stop_text = forms.CharField(
        required=False, label="Stop sequences", widget=forms.Textarea(attrs={"rows": 2, "class": "mono"}),
        help_text=f"one per line, at most {MAX_STOP_SEQUENCES}",
    )

    class Meta:
        model = ModelEndpoint
        fields = ["name", "base_url", "model", "temperature", "top_p", "max_tokens", "system_prompt", "timeout_seconds", "concurrency", "is_active"]
        widgets = {"system_prompt": forms.Textarea(attrs={"rows": 3})}
        labels = {"base_url": "Base URL", "model": "Model id", "timeout_seconds": "Timeout (s)", "is_active": "Active"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["stop_text"].initial = "\n".join(self.instance.stop or [])
        if self.instance.builtin:
            for name in ("name", "base_url", "model", "api_key", "clear_key"):
                self.fields.pop(name)
        else:
            self.fields["base_url"].required = True

    def clean_stop_text(self):
        lines = [line for line in self.cleaned_data.get("stop_text", "").replace("\r", "").split("\n") if line]
        if len(lines) > MAX_STOP_SEQUENCES:
            raise forms.ValidationError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return lines

    def values(self) -> dict:
        values = {name: self.cleaned_data[name] for name in self.Meta.fields if name in self.fields}
        values["stop"] = self.cleaned_data["stop_text"]
        return values


@labeling_admin_required
def endpoint_list(request):
    endpoints = list(ModelEndpoint.objects.all())
    return render(request, "console/endpoints.html", {"endpoints": endpoints})


def _endpoint_form(request, endpoint: ModelEndpoint | None):
    form = EndpointForm(request.POST or None, instance=endpoint)
    if request.method == "POST" and form.is_valid():
        try:
            saved = endpoint_services.save_endpoint(
                endpoint=endpoint, values=form.values(), api_key=form.cleaned_data.get("api_key") or None,
                clear_key=bool(form.cleaned_data.get("clear_key")),
            )
        except InvalidEndpoint as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
        else:
            messages.success(request, f"Endpoint “{saved.name}” saved.")
            return redirect("console:endpoints")
    return render(request, "console/endpoint_form.html", {"form": form, "endpoint": endpoint})


@labeling_admin_required
def endpoint_create(request):
    return _endpoint_form(request, None)


@labeling_admin_required
def endpoint_edit(request, endpoint_id: int):
    return _endpoint_form(request, get_object_or_404(ModelEndpoint, pk=endpoint_id))


@labeling_admin_required
@require_POST
def endpoint_test(request, endpoint_id: int):
    endpoint = get_object_or_404(ModelEndpoint, pk=endpoint_id)
    result = endpoint_services.probe_endpoint(endpoint=endpoint)
    if result.ok:
        messages.success(request, f"{endpoint.name} {result.message}: “{result.reply}”")
    else:
        messages.warning(request, f"{endpoint.name} failed: {result.message}")
    return redirect("console:endpoints")


class LiveSettingsForm(forms.ModelForm):
    class Meta:
        model = ProjectLiveSettings
        fields = ["enabled", "endpoints", "pairing", "max_turns", "max_prompt_chars", "max_tokens", "turns_per_hour", "reveal_sources"]
        widgets = {"endpoints": forms.CheckboxSelectMultiple}
        labels = {
            "enabled": "Live page on", "max_turns": "Turns per conversation", "max_prompt_chars": "Longest message (characters)",
            "max_tokens": "Longest reply (tokens)", "turns_per_hour": "Messages per annotator per hour",
            "reveal_sources": "Reveal the sources after the vote",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["endpoints"].queryset = ModelEndpoint.objects.filter(is_active=True)
        self.fields["endpoints"].required = False


@labeling_admin_required
def live_settings(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    form = LiveSettingsForm(request.POST or None, instance=live.live_settings_for(project))
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Live page settings saved.")
        return redirect("console:live_settings", project_id=project.pk)
    return render(request, "console/live_settings.html", {"form": form, "project": project})
