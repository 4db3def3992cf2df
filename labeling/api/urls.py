from django.urls import path
from rest_framework.routers import SimpleRouter

from . import endpoints, views

router = SimpleRouter()
router.register("projects", views.ProjectViewSet, basename="project")

urlpatterns = [
    path("projects/<int:project_id>/next-task/", views.NextTaskView.as_view(), name="api-next-task"),
    path("projects/<int:project_id>/import/", views.ImportView.as_view(), name="api-import"),
    path("imports/", views.ImportJobListView.as_view(), name="api-import-jobs"),
    path("imports/<int:job_id>/", views.ImportJobView.as_view(), name="api-import-job"),
    path("imports/<int:job_id>/cancel/", views.ImportJobCancelView.as_view(), name="api-import-job-cancel"),
    path("projects/<int:project_id>/export/", views.ExportView.as_view(), name="api-export"),
    path("projects/<int:project_id>/quality/", views.QualityView.as_view(), name="api-quality"),
    path("assignments/<int:assignment_id>/submit/", views.SubmitView.as_view(), name="api-submit"),
    path("assignments/<int:assignment_id>/skip/", views.SkipView.as_view(), name="api-skip"),
    path("me/stats/", views.MyStatsView.as_view(), name="api-my-stats"),
    path("tasks/", views.TaskListView.as_view(), name="api-tasks"),
    path("tasks/<int:task_id>/", views.TaskGoldView.as_view(), name="api-task"),
    path("judgements/", views.JudgementListView.as_view(), name="api-judgements"),
    path("annotators/stats/", views.AnnotatorStatsView.as_view(), name="api-annotator-stats"),
    path("endpoints/", endpoints.EndpointListView.as_view(), name="api-endpoints"),
    path("endpoints/<int:pk>/", endpoints.EndpointDetailView.as_view(), name="api-endpoint"),
    path("endpoints/<int:pk>/test/", endpoints.EndpointTestView.as_view(), name="api-endpoint-test"),
    path("projects/<int:project_id>/live-settings/", endpoints.LiveSettingsView.as_view(), name="api-live-settings"),
    *router.urls,
]
