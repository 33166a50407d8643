from django.core.management.base import BaseCommand

from dashboard import retention


class Command(BaseCommand):
    help = ("Delete webhook deliveries, sent notifications and Slack interactions older "
            "than the retention (RUNBOARD_LOG_RETENTION_DAYS; the beat does this hourly). "
            "Work still to do and the audit are kept.")

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float,
                            help="Keep this many days instead (never less than the "
                                 "webhook replay window)")

    def handle(self, *args, days=None, **options):
        for kind, count in retention.prune(days).items():
            self.stdout.write(f"{count} {kind} deleted")
