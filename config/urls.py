from csp.decorators import csp_update
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

# The API docs page loads Swagger UI from its CDN and styles itself inline; only that page may.
_swagger_cdn = spectacular_settings.SWAGGER_UI_DIST.split("/npm/")[0]
_docs_policy = {
    "script-src": [_swagger_cdn],
    "style-src": [_swagger_cdn, "'unsafe-inline'"],
    "img-src": [_swagger_cdn],
}

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("feedback_loop.api.urls")),
    path("api/v1/", include("annotation.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path(
        "api/docs/",
        csp_update(_docs_policy)(SpectacularSwaggerView.as_view(url_name="schema")),
        name="api-docs",
    ),
    path("", include("feedback_loop.urls")),
    path("", include("annotation.urls")),
]

# A database that cannot be reached, or a full disk, answer 503 / 507 rather than 500.
handler500 = "annotation.views.server_error"
