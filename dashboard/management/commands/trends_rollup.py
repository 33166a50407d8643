from django.core.management.base import BaseCommand

from dashboard import rollup


class Command(BaseCommand):
    help = ("Rebuild the trends rollup from the runs held (the sync keeps it up to date; "
            "the migration that adds it runs this once; run it after loading runs "
            "some other way).")

    def handle(self, *args, **options):
        total = rollup.rebuild()
        self.stdout.write(f"Trends rollup rebuilt from {total} deployment(s).")
