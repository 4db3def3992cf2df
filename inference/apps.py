from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """Model endpoints (the OpenAI chat-completions protocol) and the client that calls them.
    Below labeling and training: it imports neither; both use it."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "inference"
