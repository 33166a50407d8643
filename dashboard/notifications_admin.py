"""Admin for notification channels and their delivery log (registered from admin.py)."""

import apprise
from django import forms
from django.contrib import admin, messages
from django.shortcuts import get_object_or_404, redirect
from django.urls import path
from django.views.decorators.http import require_POST

from dashboard.channels import RULE_EVENTS, Channel, Delivery
from dashboard.notifications import send_test


class ChannelForm(forms.ModelForm):
    # The URL holds the service's secret: write-only, never rendered back.
    url = forms.CharField(
        label="Apprise URL", required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="e.g. json://host/path, slack://T…/B…/…, msteams://…, mailto://…  "
                  "Leave empty to keep the stored URL.",
    )
    events = forms.MultipleChoiceField(choices=[(e.value, e.label) for e in RULE_EVENTS],
                                       widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = Channel
        fields = ["name", "url", "slack_channel", "events", "connections", "projects",
                  "environments", "enabled"]

    def clean_url(self):
        url = self.cleaned_data["url"].strip()
        if url and not apprise.Apprise().add(url):
            raise forms.ValidationError("Apprise does not know this URL (see its services).")
        return url or self.instance.url

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("url") and not cleaned.get("slack_channel"):
            raise forms.ValidationError("Give an Apprise URL or a Slack channel ID.")
        return cleaned


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    form = ChannelForm
    list_display = ["name", "kind", "enabled", "event_list", "created_at"]
    list_filter = ["enabled"]
    filter_horizontal = ["connections", "projects", "environments"]
    actions = ["send_test_message"]

    @admin.display(description="Events")
    def event_list(self, channel):
        return ", ".join(channel.events)

    def get_urls(self):
        send = require_POST(self.admin_site.admin_view(self.send_test_view))
        return [path("<int:pk>/send-test/", send, name="dashboard_channel_send_test"),
                *super().get_urls()]

    def send_test_view(self, request, pk):
        channel = get_object_or_404(Channel, pk=pk)
        if not self.has_change_permission(request, channel):
            return redirect("admin:index")
        self._test(request, channel)
        return redirect("admin:dashboard_channel_change", pk)

    @admin.action(description="Send a test message")
    def send_test_message(self, request, queryset):
        for channel in queryset:
            self._test(request, channel)

    def _test(self, request, channel):
        delivery = send_test(channel)
        if delivery.state == Delivery.State.SENT:
            self.message_user(request, f"{channel}: test message sent.", messages.SUCCESS)
        else:
            self.message_user(request, f"{channel}: not delivered: {delivery.error}",
                              messages.ERROR)


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    """The delivery log: what was sent where, and what went wrong. Read-only."""

    list_display = ["created_at", "channel", "event", "title", "state", "attempts", "sent_at"]
    list_filter = ["state", "event", "channel"]
    search_fields = ["title", "key", "error"]
    list_select_related = ["channel"]
    readonly_fields = ["channel", "event", "key", "run", "connection", "action", "state",
                       "attempts", "title", "body", "error", "slack_ts", "created_at",
                       "sent_at"]
    exclude = ["updated_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
