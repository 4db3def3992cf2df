"""The project's quality page: agreement (Krippendorff's alpha with intervals, per week,
Cohen's kappa per pair, agreement with the majority), each annotator's quality and bias
figures with the flags of the project's thresholds, pausing and lifting, the thresholds
themselves. Computed from the database on each visit (labeling.quality_data)."""

import re

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render

from .. import services
from ..exceptions import LabelingError
from ..models import Project, ProjectQualitySettings
from ..quality_data import quality_report, quality_settings_for
from .charts import interval_chart
from .common import labeling_admin_required

KAPPA_ROWS = 50


class QualitySettingsForm(forms.ModelForm):
    class Meta:
        model = ProjectQualitySettings
        fields = [
            "min_judgements", "min_time_ms", "max_fast_share", "min_gold_accuracy", "position_bias_margin",
            "max_straight_share", "straight_run_length", "auto_pause",
        ]
        labels = {
            "min_judgements": "Judgements before any flag", "min_time_ms": "Too fast below (ms)", "max_fast_share": "Most too-fast share",
            "min_gold_accuracy": "Lowest gold accuracy", "position_bias_margin": "Position bias margin",
            "max_straight_share": "Most straight-lining share", "straight_run_length": "Straight-lining run length",
            "auto_pause": "Pause flagged annotators automatically",
        }


@labeling_admin_required
def quality_page(request, project_id: int):
    project = get_object_or_404(Project, pk=project_id)
    report = quality_report(project)
    summary = report["agreement"]
    weekly = interval_chart(
        [(row["week"], row["alpha"], row["low"], row["high"]) for row in summary["alpha_by_week"]],
        title="Krippendorff's alpha per week (nominal, pairwise tasks)", y_label="alpha", x_label="week starting",
        y_min=-0.2, y_max=1.0, reference=0.667,
    )
    rm = report["reward_vs_people"]["versions"]
    rm_chart = interval_chart(
        [(day["day"], day["rate"], day["low"], day["high"]) for day in rm[0]["days"]] if rm else [],
        title="Reward model agreement with people per day", y_label="agreement", x_label="day judged",
        y_min=0.0, y_max=1.0, reference=0.5,
    )
    alpha_of_week = {row["week"]: row["alpha"] for row in summary["alpha_by_week"]}
    weekly_rows = [{**row, "alpha": alpha_of_week.get(row["week"])} for row in summary["by_week"]]
    majority = {row["annotator"]: row for row in summary["majority_agreement"]}
    annotators = [{**row, "majority": majority.get(row["username"])} for row in report["annotators"]["annotators"]]
    form = QualitySettingsForm(instance=quality_settings_for(project))
    board = report["leaderboard"]
    order = board.get("order", [])
    ranked = [i for i in order if board["sources"] and board["count_matrix"][i] and any(board["count_matrix"][i])]
    matrix = [
        {"name": board["names"][i], "cells": [
            {"rate": board["win_matrix"][i][j], "count": board["count_matrix"][i][j], "self": i == j} for j in ranked
        ]}
        for i in ranked
    ]
    return render(
        request,
        "console/quality.html",
        {
            "project": project, "report": report, "summary": summary, "weekly": weekly,
            "kappas": summary["kappa_pairs"][:KAPPA_ROWS], "annotators": annotators, "form": form,
            "project_figures": report["annotators"]["project"], "board": board, "rm": rm, "rm_chart": rm_chart, "weekly_rows": weekly_rows,
            "matrix_names": [board["names"][i] for i in ranked], "matrix": matrix,
        },
    )


@labeling_admin_required
def quality_settings(request, project_id: int):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    project = get_object_or_404(Project, pk=project_id)
    form = QualitySettingsForm(request.POST, instance=quality_settings_for(project))
    if form.is_valid():
        form.save()
        messages.success(request, "Quality thresholds saved.")
    else:
        problems = "; ".join(f"{form.fields[name].label if name in form.fields else name}: {' '.join(errors)}" for name, errors in form.errors.items())
        messages.warning(request, f"Not saved: {problems}")
    return redirect("console:quality", project_id=project.pk)


@labeling_admin_required
def quality_pause(request, project_id: int):
    """POST annotator (id), action pause (with a reason) or lift."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    project = get_object_or_404(Project, pk=project_id)
    raw = request.POST.get("annotator", "")
    # ASCII digits only: str.isdigit() also takes "１" (fullwidth), which int() reads as 1
    annotator = get_user_model().objects.filter(pk=int(raw)).first() if re.fullmatch(r"[0-9]{1,18}", raw) else None
    if annotator is None:
        messages.warning(request, "annotator: no such person.")
    elif request.POST.get("action") == "lift":
        lifted = services.lift_pause(project=project, annotator=annotator, by=request.user)
        messages.success(request, f"“{annotator.username}” may take tasks again." if lifted else f"“{annotator.username}” was not paused.")
    else:
        reason = request.POST.get("reason", "")
        try:
            services.pause_annotator(project=project, annotator=annotator, reason=reason, by=request.user)
        except LabelingError as error:
            messages.warning(request, f"Not paused: {error.message}.")
        else:
            messages.success(request, f"“{annotator.username}” is paused on this project.")
    return redirect("console:quality", project_id=project.pk)
