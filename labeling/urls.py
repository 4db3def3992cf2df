from django.urls import path

from . import views

app_name = "labeling"

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/<int:project_id>/label/", views.label, name="label"),
    path("projects/<int:project_id>/guidelines/", views.guidelines, name="guidelines"),
    path("assignments/<int:assignment_id>/submit/", views.submit, name="submit"),
    path("assignments/<int:assignment_id>/skip/", views.skip, name="skip"),
    path("judgements/", views.my_judgements, name="my_judgements"),
    path("judgements/<int:judgement_id>/revise/", views.revise, name="revise"),
    path("favicon.ico", views.favicon, name="favicon"),
]
