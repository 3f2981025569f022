from django.contrib.auth import views as auth_views
from django.urls import path

from annotation import curator_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/<int:project_id>/annotate/", views.annotate, name="annotate"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Curator pages (annotation.curator_views).
    path("projects/<int:project_id>/dashboard/", curator_views.dashboard, name="curation-dashboard"),
    path("projects/<int:project_id>/raters/", curator_views.raters, name="curation-raters"),
    path("projects/<int:project_id>/raters/add/", curator_views.member_add, name="curation-member-add"),
    path(
        "projects/<int:project_id>/raters/<int:user_id>/deactivate/",
        curator_views.member_deactivate,
        name="curation-member-deactivate",
    ),
    path("projects/<int:project_id>/import/", curator_views.import_prompts, name="curation-import"),
    path(
        "projects/<int:project_id>/exports/<slug:kind>.<slug:fmt>",
        curator_views.export,
        name="curation-export",
    ),
]
