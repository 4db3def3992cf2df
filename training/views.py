"""The staff dashboard page. Its data comes from the REST API (dashboard.js polls it)."""

from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from labeling.models import Project

from .models import RunKind


@staff_member_required
@ensure_csrf_cookie
def dashboard(request):
    projects = Project.objects.order_by("name")
    selected = projects.filter(pk=request.GET.get("project")).first() if request.GET.get("project") else projects.first()
    return render(request, "training/dashboard.html", {"projects": projects, "project": selected, "kinds": RunKind.choices})
