from django.apps import AppConfig


class FeedbackLoopConfig(AppConfig):
    name = "feedback_loop"
    verbose_name = "Feedback loop"
    default_auto_field = "django.db.models.BigAutoField"
