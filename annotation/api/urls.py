from django.urls import include, path
from rest_framework.routers import DefaultRouter

from annotation.api import views

router = DefaultRouter()
router.register("projects", views.ProjectViewSet, basename="project")
router.register("prompts", views.PromptViewSet, basename="prompt")
router.register("outputs", views.OutputViewSet, basename="output")
router.register("tasks", views.TaskViewSet, basename="task")
router.register("leases", views.LeaseViewSet, basename="lease")
router.register("judgments", views.JudgmentViewSet, basename="judgment")

urlpatterns = [
    path("", include(router.urls)),
]
