from django.urls import include, path, re_path
from rest_framework.routers import DefaultRouter

from annotation.api import io_views, token_views, views, webhook_views

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
    path(
        "projects/<int:project_id>/webhooks/",
        webhook_views.ProjectWebhooksView.as_view(),
        name="project-webhooks",
    ),
    path("webhooks/<int:webhook_id>/", webhook_views.WebhookView.as_view(), name="webhook-detail"),
    path("", include(router.urls)),
    # Anything else under the API (an id that is not a number, a path that is no endpoint) is a
    # JSON 404 too. Paths without their trailing slash still get Django's redirect to it.
    re_path(r"^.*/$", views.endpoint_not_found),
]
