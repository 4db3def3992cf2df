"""The staff dashboard page. Its data comes from the REST API (dashboard.js polls it)."""

import re

from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from inference.models import ModelEndpoint
from labeling.models import Project

from . import services
from .models import RunKind, VersionKind


@staff_member_required
@ensure_csrf_cookie
def dashboard(request):
    """?project=<id> selects the project (the project pages link here); without it, the first by name."""
    projects = Project.objects.order_by("name")
    raw = request.GET.get("project", "")
    if raw and not (re.fullmatch(r"[0-9]{1,18}", raw) and int(raw) > 0):
        return HttpResponseBadRequest("project: must be a project id (a whole number from 1)\n", content_type="text/plain; charset=utf-8")
    selected = projects.filter(pk=int(raw)).first() if raw else projects.first()
    if raw and selected is None:
        raise Http404("no such project")  # not silently another project's dashboard
    # runs of kind "endpoints" have their own form (which endpoints, which prompts)
    kinds = [(value, label) for value, label in RunKind.choices if value != RunKind.ENDPOINTS]
    context = {"projects": projects, "project": selected, "kinds": kinds,
               "endpoints": ModelEndpoint.objects.filter(is_active=True).order_by("builtin", "name")}
    if selected is not None:
        context["default_prompts"] = services.training_settings_for(selected).generate_prompts
        # rendered once here so the page says it before the first poll; dashboard.js keeps it current
        context["active_policy"] = services.active_version(selected, VersionKind.POLICY)
        context["active_reward"] = services.active_version(selected, VersionKind.REWARD)
    return render(request, "training/dashboard.html", context)
