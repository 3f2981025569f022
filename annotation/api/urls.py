from django.urls import include, path
from rest_framework.routers import DefaultRouter

from annotation.api import io_views, token_views, views

router = DefaultRouter()
router.register("projects", views.ProjectViewSet, basename="project")
router.register("prompts", views.PromptViewSet, basename="prompt")
router.register("outputs", views.OutputViewSet, basename="output")
router.register("tasks", views.TaskViewSet, basename="task")
router.register("leases", views.LeaseViewSet, basename="lease")
router.register("judgments", views.JudgmentViewSet, basename="judgment")

urlpatterns = [
    path("projects/<int:project_id>/import/", io_views.ProjectImportView.as_view(), name="project-import"),
    path("projects/<int:project_id>/export/", io_views.ProjectExportView.as_view(), name="project-export"),
    path("auth/token/", token_views.TokenView.as_view(), name="auth-token"),
    path("auth/token/rotate/", token_views.TokenRotateView.as_view(), name="auth-token-rotate"),
    path("", include(router.urls)),
]
