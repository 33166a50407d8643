from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from dashboard import schedule
from dashboard.models import Connection


class Command(BaseCommand):
    help = ("Generate a connection's webhook secret (printed once; the old one stops working) "
            "and print its webhook URL and setup steps; or turn its webhooks off.")

    def add_arguments(self, parser):
        parser.add_argument("connection", help="The connection's name")
        parser.add_argument("--off", action="store_true",
                            help="Turn webhooks off (the connection falls back to polling)")

    def handle(self, *args, connection, off, **options):
        try:
            conn = Connection.objects.get(name=connection)
        except Connection.DoesNotExist:
            raise CommandError(f"No connection named {connection!r}") from None
        if off:
            # Poll as soon as the budget allows: deliveries from now on are refused.
            Connection.objects.filter(pk=conn.pk).update(webhooks_enabled=False)
            schedule.poll_soon(conn.pk, reason="webhooks turned off")
            self.stdout.write(f"Webhooks off for {conn.name}: polling only.")
            return
        provider = conn.provider_class
        if not provider.webhook_events:
            raise CommandError(f"{provider.label} sends no webhooks")
        secret = conn.set_webhook_secret()
        Connection.objects.filter(pk=conn.pk).update(webhooks_enabled=True)
        # The connections page shows the address it is viewed at; a command has only this.
        url = settings.RUNBOARD_BASE_URL + reverse("webhook", args=[conn.webhook_key])
        self.stdout.write(f"Webhook URL: {url}\nSecret (shown once): {secret}\n"
                          f"Setup: {provider.webhook_setup.format(url=url)}")
