from django.urls import path

from . import data, endpoints, people, projects, quality

app_name = "console"

urlpatterns = [
    path("", projects.project_list, name="projects"),
    path("projects/new/", projects.project_create, name="project_create"),
    path("projects/<int:project_id>/", projects.project_detail, name="project"),
    path("projects/<int:project_id>/edit/", projects.project_edit, name="project_edit"),
    path("projects/<int:project_id>/archive/", projects.project_archive, name="project_archive"),
    path("markdown-preview/", projects.markdown_preview, name="markdown_preview"),
    path("projects/<int:project_id>/import/", data.import_page, name="import"),
    path("imports/<int:job_id>/", data.import_job, name="import_job"),
    path("imports/<int:job_id>/state/", data.import_job_state, name="import_job_state"),
    path("imports/<int:job_id>/cancel/", data.import_job_cancel, name="import_job_cancel"),
    path("imports/<int:job_id>/report.txt", data.import_report, name="import_report"),
    path("projects/<int:project_id>/export/", data.export_page, name="export"),
    path("projects/<int:project_id>/tasks/", data.task_list, name="tasks"),
    path("tasks/<int:task_id>/", data.task_detail, name="task"),
    path("tasks/<int:task_id>/gold/", data.task_gold, name="task_gold"),
    path("projects/<int:project_id>/judgements/", data.judgement_list, name="judgements"),
    path("projects/<int:project_id>/quality/", quality.quality_page, name="quality"),
    path("projects/<int:project_id>/quality/settings/", quality.quality_settings, name="quality_settings"),
    path("projects/<int:project_id>/quality/pause/", quality.quality_pause, name="quality_pause"),
    path("projects/<int:project_id>/live/", endpoints.live_settings, name="live_settings"),
    path("endpoints/", endpoints.endpoint_list, name="endpoints"),
    path("endpoints/new/", endpoints.endpoint_create, name="endpoint_create"),
    path("endpoints/<int:endpoint_id>/", endpoints.endpoint_edit, name="endpoint_edit"),
    path("endpoints/<int:endpoint_id>/test/", endpoints.endpoint_test, name="endpoint_test"),
    *people.urlpatterns,
]
