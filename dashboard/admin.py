from django import forms
from django.contrib import admin

from dashboard.models import ActionRecord, Connection, Environment, Job, Project, Run


class ConnectionForm(forms.ModelForm):
    # The token is write-only: the admin never renders the stored value back.
    token = forms.CharField(
        widget=forms.PasswordInput(render_value=False), required=False,
        help_text="Leave empty to keep the stored token.",
    )

    class Meta:
        model = Connection
        fields = ["provider", "name", "base_url", "token", "scope", "enabled"]

    def clean_token(self):
        token = self.cleaned_data["token"]
        if not token and not self.instance.pk:
            raise forms.ValidationError("A token is required.")
        return token or self.instance.token


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    form = ConnectionForm
    list_display = ["name", "provider", "enabled", "last_success_at", "last_error_at",
                    "next_attempt_at", "runs_synced"]
    list_filter = ["provider", "enabled"]
    readonly_fields = ["cursor", "last_attempt_at", "last_success_at", "last_error",
                       "last_error_at", "next_attempt_at", "runs_synced", "lease_owner",
                       "lease_until"]


@admin.register(Project, Environment)
class ScopedAdmin(admin.ModelAdmin):
    list_display = ["name", "external_id", "connection"]
    list_filter = ["connection"]
    search_fields = ["name", "external_id"]


class JobInline(admin.TabularInline):
    model = Job
    extra = 0
    fields = ["order", "name", "status", "raw_status", "environment", "review_conclusion"]
    readonly_fields = fields
    can_delete = False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["name", "connection", "status", "raw_status", "version", "created_at"]
    list_filter = ["status", "connection"]
    search_fields = ["name", "external_id", "version", "branch", "commit"]
    list_select_related = ["connection"]
    raw_id_fields = ["project", "environment"]
    inlines = [JobInline]


@admin.register(ActionRecord)
class ActionRecordAdmin(admin.ModelAdmin):
    list_display = ["created_at", "user", "kind", "run", "state", "response_code"]
    list_filter = ["kind", "state"]
    search_fields = ["comment", "run__name", "user__username"]
    list_select_related = ["run", "user"]
    readonly_fields = [f.name for f in ActionRecord._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# --- notification channels (dashboard/notifications.py) -------------------------------

from dashboard.notifications_admin import ChannelAdmin, DeliveryAdmin  # noqa: E402, F401
