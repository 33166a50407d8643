from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from dashboard.models import ActionRecord, ApiToken, Connection, Environment, Job, Project, Run
from dashboard.secrets import UNREADABLE_MESSAGE


class ConnectionForm(forms.ModelForm):
    # The token is write-only: the admin never renders the stored value back.
    token = forms.CharField(
        widget=forms.PasswordInput(render_value=False), required=False,
        help_text="Leave empty to keep the stored token.",
    )

    class Meta:
        model = Connection
        fields = ["provider", "name", "base_url", "token", "scope", "enabled", "webhooks_enabled",
                  "requests_per_hour"]

    def clean_token(self):
        # A new token, or None: then the stored one is kept as it is (see save_model).
        self.new_token = self.cleaned_data["token"] or None
        if not self.new_token and not self.instance.pk:
            raise forms.ValidationError("A token is required.")
        return self.new_token or self.instance.token

    def clean(self):
        cleaned = super().clean()
        if (self.instance.pk and "base_url" in self.changed_data
                and not getattr(self, "new_token", None)):
            # The stored token was given for the old host; never send it to another.
            self.add_error("token", "Enter the token again: the base URL changed, and the "
                                    "stored token is never sent to a new host.")
        return cleaned


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    form = ConnectionForm
    list_display = ["name", "provider", "enabled", "token_state", "last_success_at",
                    "last_error_at", "next_attempt_at", "runs_synced"]
    list_filter = ["provider", "enabled"]
    readonly_fields = ["token_state", "cursor", "last_attempt_at", "last_success_at",
                       "last_error", "last_error_at", "next_attempt_at", "runs_synced",
                       "lease_owner", "lease_until"]

    @admin.display(description="Token")
    def token_state(self, obj):
        return "stored" if obj.token_readable else UNREADABLE_MESSAGE

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        if request.method == "GET" and obj is not None and not obj.token_readable:
            messages.warning(request, f"{obj}: {UNREADABLE_MESSAGE}")
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        if change and not form.new_token:
            # Write the form's own fields only: the stored token stays byte for byte (an
            # unreadable one is never re-encrypted), and sync state is not overwritten.
            obj.save(update_fields=[*(f for f in ConnectionForm.Meta.fields if f != "token"),
                                    "updated_at"])
        else:
            obj.save()
        if change and "webhooks_enabled" in form.changed_data:
            # Webhooks off: nothing announces changes any more, so poll as soon as the
            # budget allows instead of at the reconcile interval planned while they were on.
            from dashboard import schedule

            schedule.poll_soon(obj.pk, reason="webhooks turned " + (
                "on" if obj.webhooks_enabled else "off"))

    actions = ["new_webhook_secret"]

    @admin.action(description="Generate a new webhook secret (shown once) and turn webhooks on")
    def new_webhook_secret(self, request, queryset):
        issued = []
        for connection in queryset:
            secret = connection.set_webhook_secret()
            Connection.objects.filter(pk=connection.pk).update(webhooks_enabled=True)
            url = request.build_absolute_uri(reverse("webhook", args=[connection.webhook_key]))
            issued.append((connection, url, secret))
        # Shown once, in this answer only: a message would carry it in a cookie (or the
        # session table) until the next page; only its hash is stored.
        return TemplateResponse(request, "admin/dashboard/connection/webhook_secrets.html",
                                {**self.admin_site.each_context(request), "issued": issued})


@admin.register(Project, Environment)
class ScopedAdmin(admin.ModelAdmin):
    list_display = ["name", "external_id", "connection"]
    list_filter = ["connection"]
    search_fields = ["name", "external_id"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Written by syncs and actions only; the admin shows, never edits or deletes."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class JobInline(admin.TabularInline):
    model = Job
    extra = 0
    fields = ["order", "name", "status", "raw_status", "environment", "review_conclusion"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ["name", "connection", "status", "raw_status", "version", "created_at"]
    list_filter = ["status", "connection"]
    search_fields = ["name", "external_id", "version", "branch", "commit"]
    list_select_related = ["connection"]
    inlines = [JobInline]


@admin.register(ActionRecord)
class ActionRecordAdmin(ReadOnlyAdmin):
    """The audit trail is append-only: no add, change or delete here either."""

    list_display = ["created_at", "user", "kind", "run", "state", "response_code"]
    list_filter = ["kind", "state"]
    search_fields = ["comment", "run__name", "user__username"]
    list_select_related = ["run", "user"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Every user's API tokens: listed and revocable here, issued on the profile page."""

    list_display = ["name", "user", "prefix", "read_only", "created_at", "expires_at",
                    "last_used_at", "revoked_at"]
    list_filter = ["read_only", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "user__username"]
    list_select_related = ["user"]
    readonly_fields = ["user", "name", "prefix", "read_only", "created_at", "expires_at",
                       "last_used_at", "revoked_at"]
    exclude = ["key_hash"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # revoked tokens stay listed: who had access, and until when

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)


# --- notification channels (dashboard/notifications.py) -------------------------------

from dashboard.notifications_admin import ChannelAdmin, DeliveryAdmin  # noqa: E402, F401

admin.site.site_header = "Runboard administration"
admin.site.site_title = "Runboard"
admin.site.index_title = "Set-up: connections, users and release managers"
