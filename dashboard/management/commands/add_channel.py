import sys

import apprise
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from dashboard.channels import DEFAULT_EVENTS, RULE_EVENTS, Channel
from dashboard.models import Connection, Environment, Project

EVENT_NAMES = [e.value for e in RULE_EVENTS]


class Command(BaseCommand):
    help = ("Add (or update) a notification channel: an Apprise URL and which events, "
            "connections, projects and environments it hears about.")

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("url", help="An Apprise URL (json://…, slack://…, msteams://…), or "
                                        "'-' to read it from standard input (keeps it out of "
                                        "shell history)")
        parser.add_argument("--events", nargs="+", metavar="EVENT",
                            help=f"Any of {', '.join(EVENT_NAMES)} "
                                 f"(default: {', '.join(e.value for e in DEFAULT_EVENTS)})")
        parser.add_argument("--connection", action="append", default=[], metavar="NAME",
                            help="Only runs of this connection (repeatable)")
        parser.add_argument("--project", action="append", default=[], metavar="NAME",
                            help="Only runs of this project (repeatable)")
        parser.add_argument("--environment", action="append", default=[], metavar="NAME",
                            help="Only runs in an environment of this name (repeatable)")
        parser.add_argument("--slack-channel", default="", metavar="ID",
                            help="Post interactive messages to this Slack channel through the "
                                 "Slack app instead (give '' as the URL)")

    def handle(self, *args, name, url, events, connection, project, environment,
               slack_channel, **options):
        if url == "-":
            url = sys.stdin.readline().strip()
        if url and not apprise.Apprise().add(url):
            raise CommandError("Apprise does not know this URL (see its list of services)")
        if not url and not slack_channel:
            raise CommandError("Give an Apprise URL or --slack-channel")
        events = [e.strip() for item in (events or []) for e in item.split(",") if e.strip()]
        unknown = sorted(set(events) - set(EVENT_NAMES))
        if unknown:
            raise CommandError(f"No event {', '.join(unknown)}; choose from "
                               f"{', '.join(EVENT_NAMES)}")
        connections = self._named(Connection, connection, "connection")
        projects = self._named(Project, project, "project")
        environments = self._named(Environment, environment, "environment")
        with transaction.atomic():
            channel, created = Channel.objects.update_or_create(name=name, defaults={
                "url": url, "slack_channel": slack_channel, "enabled": True,
                "events": list(dict.fromkeys(events)) or [e.value for e in DEFAULT_EVENTS],
            })
            channel.connections.set(connections)
            channel.projects.set(projects)
            channel.environments.set(environments)
        self.stdout.write(f"{'Added' if created else 'Updated'} channel {channel.name} "
                          f"({channel.kind}): {', '.join(channel.events)}")

    @staticmethod
    def _named(model, names: list[str], what: str) -> list:
        found = list(model.objects.filter(name__in=names))
        missing = sorted(set(names) - {obj.name for obj in found})
        if missing:
            raise CommandError(f"No {what} named {', '.join(missing)}")
        return found
