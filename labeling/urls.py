from django.urls import path

from . import live_views, views

app_name = "labeling"

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/<int:project_id>/label/", views.label, name="label"),
    path("projects/<int:project_id>/guidelines/", views.guidelines, name="guidelines"),
    path("assignments/<int:assignment_id>/submit/", views.submit, name="submit"),
    path("assignments/<int:assignment_id>/skip/", views.skip, name="skip"),
    path("projects/<int:project_id>/live/", live_views.live_page, name="live"),
    path("projects/<int:project_id>/live/say/", live_views.live_say, name="live_say"),
    path("projects/<int:project_id>/live/seed/", live_views.live_seed, name="live_seed"),
    path("projects/<int:project_id>/live/new/", live_views.live_new, name="live_new"),
    path("live/turns/<int:turn_id>/stream/", live_views.live_stream, name="live_stream"),
    path("live/turns/<int:turn_id>/judge/", live_views.live_judge, name="live_judge"),
    path("judgements/", views.my_judgements, name="my_judgements"),
    path("judgements/<int:judgement_id>/revise/", views.revise, name="revise"),
    path("favicon.ico", views.favicon, name="favicon"),
]
