"""Filters for the run list, the JSON API and the audit page; all live in the URL."""

from datetime import timedelta

import django_filters
from django.db.models import Q
from django.utils import timezone

from dashboard.models import ActionRecord, Connection, Environment, Project, Run
from providers import registry
from providers.base import Action, Status

STATUS_GROUPS = {
    "active": [Status.QUEUED, Status.RUNNING, Status.CANCELLING, Status.UNKNOWN],
    "waiting": [Status.WAITING],
    "failed": [Status.FAILED],
    "finished": [Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.SKIPPED],
}
RANGES = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7),
          "30d": timedelta(days=30)}


class RunFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(label="Search", method="filter_search")
    group = django_filters.ChoiceFilter(
        label="Status", method="filter_group", empty_label="Any status",
        choices=[("active", "Active"), ("waiting", "Waiting for approval"),
                 ("failed", "Failed"), ("finished", "Finished")],
    )
    status = django_filters.MultipleChoiceFilter(choices=Status.choices, label="Exact status")
    provider = django_filters.ChoiceFilter(
        field_name="connection__provider", choices=registry.choices, empty_label="All providers",
        label="Provider",
    )
    connection = django_filters.ModelChoiceFilter(
        queryset=Connection.objects.all(), empty_label="All connections")
    project = django_filters.ModelChoiceFilter(
        queryset=Project.objects.all(), empty_label="All projects")
    pipeline = django_filters.CharFilter(field_name="pipeline_name", label="Pipeline")
    environment = django_filters.ModelChoiceFilter(
        queryset=Environment.objects.all(), empty_label="All environments")
    by = django_filters.CharFilter(field_name="triggered_by", lookup_expr="icontains",
                                   label="Triggered by")
    range = django_filters.ChoiceFilter(
        label="Started", method="filter_range", empty_label="Any time",
        choices=[("1h", "Last hour"), ("24h", "Last 24 hours"), ("7d", "Last 7 days"),
                 ("30d", "Last 30 days")],
    )

    class Meta:
        model = Run
        fields = []

    def filter_group(self, queryset, name, value):
        return queryset.filter(status__in=STATUS_GROUPS[value])

    def filter_range(self, queryset, name, value):
        return queryset.filter(created_at__gte=timezone.now() - RANGES[value])

    def filter_search(self, queryset, name, value):
        terms = Q()
        for field in ("name", "version", "branch", "commit", "pipeline_name", "external_id"):
            terms |= Q(**{f"{field}__icontains": value})
        return queryset.filter(terms)


class ActionFilter(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=Action.choices, empty_label="Any action")
    state = django_filters.ChoiceFilter(choices=ActionRecord.State.choices,
                                        empty_label="Any result")
    user = django_filters.CharFilter(field_name="user__username", label="User")
    q = django_filters.CharFilter(label="Run or comment", method="filter_search")

    class Meta:
        model = ActionRecord
        fields = []

    def filter_search(self, queryset, name, value):
        return queryset.filter(Q(run__name__icontains=value) | Q(comment__icontains=value))
