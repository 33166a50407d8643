from django.core.management.base import BaseCommand, CommandError

from dashboard import sync
from dashboard.models import Connection
from providers.base import ProviderError


class Command(BaseCommand):
    help = "Sync runs from providers now (the same pass the Celery worker runs)."

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="*", help="Connection names (default: all enabled)")

    def handle(self, *args, names, **options):
        connections = Connection.objects.filter(enabled=True)
        if names:
            connections = Connection.objects.filter(name__in=names)
            missing = set(names) - set(connections.values_list("name", flat=True))
            if missing:
                raise CommandError(f"No connection named {', '.join(sorted(missing))}")
        failed = False
        for connection in connections:
            try:
                result = sync.sync_connection(connection.pk)
            except ProviderError as exc:
                failed = True
                self.stderr.write(f"{connection}: {exc.message}")
                continue
            if result.skipped:
                self.stdout.write(f"{connection}: skipped, another sync holds the lease")
            else:
                self.stdout.write(
                    f"{connection}: {result.runs_written} runs written from {result.pages} "
                    f"pages in {result.requests} requests"
                )
        if failed:
            raise CommandError("some connections failed to sync")
