from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from dashboard import (
    api,
    attention,
    auth,
    health,
    inbox,
    metrics,
    previews,
    releases,
    slack,
    trends,
    views,
    webhooks,
)

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="run-list", permanent=False)),
    path("runs/", views.run_list, name="run-list"),
    path("runs/<int:pk>/", previews.public_preview(views.run_detail), name="run-detail"),
    path("runs/<int:pk>/<str:kind>/", views.run_action, name="run-action"),
    path("runs/<str:provider>/<path:external_id>/", previews.public_preview(views.run_permalink),
         name="run-permalink"),
    path("environments/", views.environment_board, name="environment-board"),
    path("inbox/", inbox.inbox, name="inbox"),
    path("inbox/release/", inbox.approve_release, name="inbox-release"),
    path("inbox/<int:pk>/<str:kind>/", inbox.act, name="inbox-act"),
    path("releases/", releases.releases, name="releases"),
    path("trends/", trends.trends, name="trends"),
    path("attention/", attention.strip, name="attention"),
    path("connections/", views.connections, name="connections"),
    path("audit/", views.audit, name="audit"),
    path("audit/export.<str:fmt>", views.audit_export, name="audit-export"),
    path("profile/", views.profile, name="profile"),
    path("api/", api.api.urls),
    path("accounts/login/", auth.LoginView.as_view(), name="login"),
    path("oidc/authenticate/", auth.oidc_login, name="oidc_authentication_init"),
    path("oidc/callback/", auth.oidc_callback, name="oidc_authentication_callback"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("slack/interactive/", slack.interactive, name="slack-interactive"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("hooks/<uuid:key>/", webhooks.receive, name="webhook"),
    path("metrics", metrics.metrics, name="metrics"),
]
