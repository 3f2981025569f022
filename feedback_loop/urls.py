from django.urls import path

from feedback_loop import views

urlpatterns = [
    path("projects/<int:project_id>/rounds/", views.rounds, name="loop-rounds"),
    path("projects/<int:project_id>/rounds/start/", views.round_start, name="loop-round-start"),
    path("projects/<int:project_id>/rounds/<int:number>/", views.round_detail, name="loop-round"),
    path("projects/<int:project_id>/rounds/<int:number>/retry/", views.round_retry, name="loop-round-retry"),
    path(
        "projects/<int:project_id>/rounds/<int:number>/cancel/", views.round_cancel, name="loop-round-cancel"
    ),
]
