"""Notification channels and their delivery log (models; imported by dashboard.models).

A Channel is an Apprise URL (or a Slack channel for interactive messages) plus rules.
A Delivery is both the claim and the log: it is inserted, under a unique constraint on
(channel, event, key), before anything is sent, so a re-sync, a second worker or a
retried task finds the claim taken and sends nothing.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from dashboard.secrets import SecretTextField, UnreadableSecret


class Event(models.TextChoices):
    WAITING = "waiting", "Waiting for approval"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    SUCCEEDED = "succeeded", "Succeeded"
    STARTED = "started", "Started running"
    STALE = "stale", "Connection stale"
    ACTION = "action", "Action taken"
    TEST = "test", "Test message"


# What a channel gets unless told otherwise: the events the issue asks for.
DEFAULT_EVENTS = [Event.WAITING, Event.FAILED, Event.CANCELLED, Event.SUCCEEDED, Event.STALE,
                  Event.ACTION]
RULE_EVENTS = [e for e in Event if e != Event.TEST]


def default_events():
    return [e.value for e in DEFAULT_EVENTS]


class Channel(models.Model):
    name = models.CharField(max_length=100, unique=True)
    # Unreadable under the configured keys: fails loudly, never re-encrypted (secrets.py).
    url = SecretTextField(
        blank=True, null=True,  # the field stores an empty value as NULL
        help_text="An Apprise URL (json://, slack://, msteams://, mailto://, …). "
                  "Stored encrypted; never shown again.",
    )
    slack_channel = models.CharField(
        max_length=40, blank=True,
        help_text="A Slack channel ID (C…): post interactive messages with approve, reject "
                  "and cancel buttons through the Slack app (RUNBOARD_SLACK_BOT_TOKEN) "
                  "instead of the Apprise URL.",
    )
    events = models.JSONField(default=default_events,
                              help_text="Which events this channel is told about.")
    connections = models.ManyToManyField("dashboard.Connection", blank=True,
                                         help_text="Only these connections (none: all).")
    projects = models.ManyToManyField("dashboard.Project", blank=True,
                                      help_text="Only these projects (none: all).")
    environments = models.ManyToManyField("dashboard.Environment", blank=True,
                                          help_text="Only these environments (none: all).")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Deliveries the retention deleted, by state (see Connection.webhook_deliveries_pruned).
    deliveries_pruned = models.JSONField(default=dict, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def kind(self) -> str:
        """What the channel is, without its secrets: the URL's scheme only."""
        if self.slack_channel:
            return f"Slack app → {self.slack_channel}"
        if isinstance(self.url, UnreadableSecret):
            return "(unreadable: re-enter the URL)"
        return f"{self.url.split('://', 1)[0]}://…" if self.url else "(none)"


class Delivery(models.Model):
    """One notification of one channel: claimed first, then sent (and retried)."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=16, choices=Event.choices)
    # What makes this event happen once: the run (or connection, action) and its state
    # change, e.g. "run 12 waiting job-3" or "connection 4 stale since 2026-…".
    key = models.CharField(max_length=300)
    run = models.ForeignKey("dashboard.Run", null=True, blank=True, on_delete=models.CASCADE,
                            related_name="deliveries")
    connection = models.ForeignKey("dashboard.Connection", null=True, blank=True,
                                   on_delete=models.CASCADE, related_name="+")
    action = models.ForeignKey("dashboard.ActionRecord", null=True, blank=True,
                               on_delete=models.SET_NULL, related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    title = models.CharField(max_length=300, blank=True)
    body = models.TextField(blank=True)
    error = models.TextField(blank=True)
    # Where an interactive Slack message was posted, to update it in place.
    slack_ts = models.CharField(max_length=40, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["channel", "event", "key"],
                                    name="one_delivery_per_event_and_state"),
        ]

    def __str__(self):
        return f"{self.get_event_display()} → {self.channel}"


class SlackInteraction(models.Model):
    """A Slack interaction already handled: a replayed request (same trigger) does nothing."""

    trigger_id = models.CharField(max_length=200, unique=True)
    slack_user = models.CharField(max_length=40)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                             on_delete=models.SET_NULL)
    action = models.CharField(max_length=16)
    run = models.ForeignKey("dashboard.Run", null=True, blank=True, on_delete=models.SET_NULL)
    outcome = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.action} by {self.slack_user}"
