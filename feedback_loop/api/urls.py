from django.urls import path

from feedback_loop.api import views

urlpatterns = [
    path("projects/<int:project_id>/rounds/", views.ProjectRoundsView.as_view(), name="project-rounds"),
    path("rounds/<int:round_id>/", views.RoundDetailView.as_view(), name="round-detail"),
    path("rounds/<int:round_id>/retry/", views.RoundRetryView.as_view(), name="round-retry"),
    path("rounds/<int:round_id>/cancel/", views.RoundCancelView.as_view(), name="round-cancel"),
]
