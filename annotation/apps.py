from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "annotation"
    verbose_name = "Annotation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Connects the receiver that revokes API tokens when a password changes.
        from annotation import api_tokens  # noqa: F401
