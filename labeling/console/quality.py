"""The project's quality page: agreement (Krippendorff's alpha with intervals, per week,
Cohen's kappa per pair, agreement with the majority), computed from the database on each
visit (labeling.quality_data)."""

from django.shortcuts import get_object_or_404, render

from ..models import Project
from ..quality_data import quality_report
from .charts import interval_chart
from .common import labeling_admin_required

KAPPA_ROWS = 50


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
    return render(
        request,
        "console/quality.html",
        {"project": project, "report": report, "summary": summary, "weekly": weekly, "kappas": summary["kappa_pairs"][:KAPPA_ROWS]},
    )
