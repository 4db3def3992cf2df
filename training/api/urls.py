from django.urls import path

from . import views

urlpatterns = [
    path("training-runs/", views.TrainingRunListView.as_view(), name="api-training-runs"),
    path("default-policy/", views.DefaultPolicyView.as_view(), name="api-default-policy"),
    path("training-runs/<int:pk>/", views.TrainingRunDetailView.as_view(), name="api-training-run"),
    path("training-runs/<int:pk>/cancel/", views.CancelRunView.as_view(), name="api-training-run-cancel"),
    path("model-versions/", views.ModelVersionListView.as_view(), name="api-model-versions"),
    path("model-versions/<int:pk>/promote/", views.PromoteVersionView.as_view(), name="api-model-version-promote"),
    path("projects/<int:project_id>/endpoint-runs/", views.EndpointRunView.as_view(), name="api-endpoint-runs"),
    path("projects/<int:project_id>/rollback/", views.RollbackView.as_view(), name="api-rollback"),
]
