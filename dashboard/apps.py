from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Runboard"

    def ready(self):
        from dashboard import metrics, notifications  # noqa: F401 (a check; a signal)
