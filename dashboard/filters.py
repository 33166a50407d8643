import django_filters
from django.db.models import Q

from dashboard.models import Run
from providers import registry
from providers.base import Status

STATUS_GROUPS = {
    "active": [Status.QUEUED, Status.RUNNING, Status.CANCELLING, Status.UNKNOWN],
    "waiting": [Status.WAITING],
    "failed": [Status.FAILED],
    "finished": [Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.SKIPPED],
}


class RunFilter(django_filters.FilterSet):
    provider = django_filters.ChoiceFilter(
        field_name="connection__provider", choices=registry.choices, empty_label="All providers"
    )
    group = django_filters.ChoiceFilter(
        label="Status", method="filter_group", empty_label="Any status",
        choices=[("active", "Active"), ("waiting", "Waiting for approval"),
                 ("failed", "Failed"), ("finished", "Finished")],
    )
    q = django_filters.CharFilter(label="Search", method="filter_search")

    class Meta:
        model = Run
        fields = ["provider", "group", "q"]

    def filter_group(self, queryset, name, value):
        return queryset.filter(status__in=STATUS_GROUPS[value])

    def filter_search(self, queryset, name, value):
        terms = Q()
        for field in ("name", "version", "branch", "commit", "pipeline_name"):
            terms |= Q(**{f"{field}__icontains": value})
        return queryset.filter(terms)
