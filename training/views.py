"""The staff dashboard page. Its data comes from the REST API (dashboard.js polls it)."""

import re

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpResponseBadRequest
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from labeling.models import Project

from .models import RunKind


@staff_member_required
@ensure_csrf_cookie
def dashboard(request):
    projects = Project.objects.order_by("name")
    raw = request.GET.get("project", "")
    if raw and not (re.fullmatch(r"[0-9]{1,18}", raw) and int(raw) > 0):
        return HttpResponseBadRequest("project: must be a project id (a whole number from 1)\n", content_type="text/plain; charset=utf-8")
    selected = projects.filter(pk=int(raw)).first() if raw else projects.first()
    return render(request, "training/dashboard.html", {"projects": projects, "project": selected, "kinds": RunKind.choices})
