from django.core.management.base import BaseCommand, CommandError

from dashboard.channels import Channel
from dashboard.models import Connection
from dashboard.secrets import UnreadableSecret


class Command(BaseCommand):
    help = ("Re-encrypt every connection's token and channel URL under the current SECRET_KEY "
            "(run it after moving the old key to SECRET_KEY_FALLBACKS, before removing it "
            "from there).")

    def handle(self, *args, **options):
        unreadable = []
        rotated = 0
        for connection in Connection.objects.order_by("pk"):
            if not connection.token_readable:
                # Left as it is: a later run with the right fallback can still rotate it.
                unreadable.append(connection.name)
                continue
            # Encryption always uses the current key; only the token column is written.
            connection.save(update_fields=["token"])
            rotated += 1
        self.stdout.write(f"Re-encrypted {rotated} token(s) under the current SECRET_KEY.")
        # Notification channels' Apprise URLs hold secrets under the same key.
        urls = 0
        for channel in Channel.objects.exclude(url=None).order_by("pk"):
            if isinstance(channel.url, UnreadableSecret):
                unreadable.append(f"channel {channel.name}")
                continue
            channel.save(update_fields=["url"])
            urls += 1
        self.stdout.write(f"Re-encrypted {urls} channel URL(s) under the current SECRET_KEY.")
        if unreadable:
            raise CommandError(
                f"{len(unreadable)} token(s) no configured key decrypts, left untouched: "
                f"{', '.join(unreadable)}. Put the key they were encrypted with in "
                "SECRET_KEY_FALLBACKS and run this again, or re-enter them in the admin."
            )
