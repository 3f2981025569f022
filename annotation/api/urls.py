from django.urls import include, path
from rest_framework.routers import DefaultRouter

from annotation.api import io_views, views, webhook_views

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
    path(
        "projects/<int:project_id>/webhooks/",
        webhook_views.ProjectWebhooksView.as_view(),
        name="project-webhooks",
    ),
    path("webhooks/<int:webhook_id>/", webhook_views.WebhookView.as_view(), name="webhook-detail"),
    path("", include(router.urls)),
]
