import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

app = Celery("runboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["dashboard"])
app.autodiscover_tasks(["dashboard"], related_name="notifications")
app.autodiscover_tasks(["dashboard"], related_name="slack")


@app.on_after_finalize.connect
def schedule_sync(sender, **kwargs):
    from django.conf import settings

    sender.add_periodic_task(
        settings.RUNBOARD_SCHEDULER_TICK, sender.signature("dashboard.tasks.sync_all"),
        name="sync the connections the scheduler says are due",
    )
    sender.add_periodic_task(60.0, sender.signature("dashboard.notifications.check_stale"),
                             name="announce stale connections")
    sender.add_periodic_task(300.0, sender.signature("dashboard.notifications.requeue_stuck"),
                             name="hand out lost notifications again")
    sender.add_periodic_task(3600.0, sender.signature("dashboard.tasks.prune_logs"),
                             name="delete log rows past their retention")
