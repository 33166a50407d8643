import os

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from dashboard.models import Connection
from providers import registry
from providers.base import ProviderError


class Command(BaseCommand):
    help = "Add (or update) a provider connection."

    def add_arguments(self, parser):
        parser.add_argument("provider", choices=sorted(registry.PROVIDERS))
        parser.add_argument("name")
        parser.add_argument("--base-url", help="API root (default: the provider's public API)")
        parser.add_argument(
            "--token-env", default="RUNBOARD_TOKEN",
            help="Environment variable holding the token (default RUNBOARD_TOKEN); "
                 "read from the environment so it never lands in shell history",
        )
        parser.add_argument("--scope", action="append", default=[], metavar="KEY=VALUE",
                            help="Scope, e.g. --scope workspace=acme (repeatable)")
        parser.add_argument("--check", action="store_true",
                            help="Call the provider and list what the token can see")
        parser.add_argument(
            "--requests-per-hour", type=int, metavar="N",
            help="The token's rate limit, where you know it: the scheduler plans with it "
                 "instead of the documented limit or the conservative default")

    def handle(self, *args, provider, name, base_url, token_env, scope, check,
               requests_per_hour, **options):
        if requests_per_hour is not None:
            try:  # the admin's rule, the model field's validators
                Connection._meta.get_field("requests_per_hour").clean(requests_per_hour, None)
            except ValidationError as exc:
                raise CommandError(f"--requests-per-hour: {' '.join(exc.messages)}") from None
        cls = registry.provider_class(provider)
        token = os.environ.get(token_env)
        if not token:
            raise CommandError(f"Set the token in the {token_env} environment variable")
        try:
            scope_dict = dict(item.split("=", 1) for item in scope)
        except ValueError:
            raise CommandError("--scope takes KEY=VALUE") from None
        unknown = set(scope_dict) - set(cls.scope_required) - set(cls.scope_optional)
        if unknown:
            raise CommandError(f"{cls.label} has no scope {', '.join(sorted(unknown))}; "
                               f"it takes {', '.join(cls.scope_required + cls.scope_optional)}")
        base_url = base_url or cls.default_base_url
        try:
            client = cls(base_url, token, scope_dict)
            if check:
                found = client.discover()
                for project in found.projects:
                    self.stdout.write(f"project {project.external_id}: {project.name}")
                for env in found.environments:
                    self.stdout.write(f"environment {env.external_id}: {env.name}")
                for pipeline in found.pipelines:
                    self.stdout.write(f"pipeline {pipeline}")
            client.close()
        except ProviderError as exc:
            raise CommandError(f"{cls.label}: {exc.message}") from exc
        fields = {"provider": provider, "base_url": base_url, "token": token,
                  "scope": scope_dict, "enabled": True}
        if requests_per_hour is not None:  # (an update without it keeps the one set)
            fields["requests_per_hour"] = requests_per_hour
        connection, created = Connection.objects.update_or_create(name=name, defaults=fields)
        self.stdout.write(f"{'Added' if created else 'Updated'} connection {connection.name}")
