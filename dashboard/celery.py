import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

app = Celery("runboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["dashboard"])


@app.on_after_finalize.connect
def schedule_sync(sender, **kwargs):
    from django.conf import settings

    sender.add_periodic_task(
        settings.RUNBOARD_SYNC_INTERVAL, sender.signature("dashboard.tasks.sync_all"),
        name="sync every connection",
    )
