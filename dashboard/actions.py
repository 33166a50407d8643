"""Acting on a run: the one path buttons and the JSON API share.

Every attempt leaves an ActionRecord (who, when, comment, options, the provider's
answer). A partial unique constraint allows one pending action of a kind per run,
so a double click or a second user cannot send a second request while one is in
flight; the provider call happens outside any transaction.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from dashboard.metrics import count_requests
from dashboard.models import ActionRecord, Run
from dashboard.secrets import UNREADABLE_MESSAGE
from dashboard.sync import upsert_runs
from providers.base import Action, ProviderError, RateLimited, RunData

logger = logging.getLogger(__name__)

# A pending record older than this belongs to a request that died mid-flight.
PENDING_EXPIRY = timedelta(minutes=2)


class ActionRefused(Exception):
    """The action was not sent, or the provider refused it; `message` is for the user."""

    def __init__(self, message: str, record: ActionRecord | None = None, status: int = 409):
        super().__init__(message)
        self.message, self.record, self.status = message, record, status


def refusal(run: Run, kind: str, user=None) -> str | None:
    """Why `kind` cannot be done on `run` now (by `user`, if given), or None if it can."""
    provider = run.connection.provider_class
    if kind not in provider.actions:
        note = provider.unsupported_reasons.get(kind)
        return f"{provider.label} does not support {kind}" + (f": {note}" if note else ".")
    if not run.connection.token_readable:
        return f"{run.connection}: {UNREADABLE_MESSAGE}"
    if kind == Action.APPROVE and run.raw_status in provider.waiting_elsewhere:
        return provider.waiting_elsewhere[run.raw_status]
    if kind == Action.APPROVE and user is not None and triggered_by_user(run, user):
        return ("You triggered this run: separation of duties needs someone else to "
                "approve it.")
    if provider.acts_on_environment and run.is_superseded():
        return (f"A newer run exists in {run.environment}: {provider.label} acts on an "
                "environment's current run only.")
    if kind not in run.available_actions():
        if run.is_finished:
            return f"This run already finished ({run.get_status_display().lower()})."
        return f"A run that is {run.get_status_display().lower()} cannot be sent {kind}."
    return None


def perform(run: Run, user, kind: str, comment: str = "", force: bool = False,
            variables: dict[str, str] | None = None) -> ActionRecord:
    """`variables`: values for what a waiting run asks for (approve only, e.g. Buddy's
    APPLY_VARIABLES); the audit keeps their names, not their values."""
    comment = comment.strip()
    provider = run.connection.provider_class
    options = {"force_cancel": True} if force and kind == Action.CANCEL else {}
    if variables and kind != Action.APPROVE:
        raise ActionRefused("Variables go with approve only.", status=400)
    if variables:
        options["variables"] = sorted(variables)
    if force and not (kind == Action.CANCEL and provider.has_force_cancel):
        raise ActionRefused(f"{provider.label} has no force cancel.", status=400)
    if kind == Action.CANCEL and not comment:
        raise ActionRefused("A comment is required to cancel a run.", status=400)

    run.refresh_from_db()
    reason = refusal(run, kind, user)
    if reason:
        record = ActionRecord.objects.create(
            run=run, user=user, kind=kind, comment=comment, options=options,
            state=ActionRecord.State.FAILED, response=f"Refused by Runboard: {reason}",
            finished_at=timezone.now(),
        )
        raise ActionRefused(reason, record)

    ActionRecord.objects.filter(
        run=run, kind=kind, state=ActionRecord.State.PENDING,
        created_at__lt=timezone.now() - PENDING_EXPIRY,
    ).update(state=ActionRecord.State.FAILED, response="Interrupted: no answer was recorded.",
             finished_at=timezone.now())
    try:
        with transaction.atomic():
            record = ActionRecord.objects.create(
                run=run, user=user, kind=kind, comment=comment, options=options
            )
    except IntegrityError:
        raise ActionRefused(
            f"Another {kind} of this run is already in flight; wait for its answer."
        ) from None

    client = None
    try:
        with run.connection.client() as client:
            if kind == Action.CANCEL:
                answer = client.cancel(run.locator, comment=comment, force=force)
            elif kind == Action.RETRY:
                answer = client.retry(run.locator)
            elif variables:
                answer = client.approve(run.locator, comment=comment, variables=variables)
            else:
                answer = getattr(client, kind)(run.locator, comment=comment)
    except ProviderError as exc:
        record.state = ActionRecord.State.FAILED
        record.response_code = exc.status_code
        record.response = exc.body or exc.message
        record.finished_at = timezone.now()
        record.save()
        raise ActionRefused(_plain_words(exc), record, status=502) from exc
    finally:
        if client is not None:
            count_requests(run.connection_id, client)

    record.state = ActionRecord.State.SUCCEEDED
    record.response_code = 200
    record.finished_at = timezone.now()
    if isinstance(answer, RunData):
        new = {"status": answer.raw_status, "normalized": answer.status.value}
        if answer.external_id != run.external_id:  # e.g. a retry that started a new run
            new["run"] = answer.external_id
        record.response = json.dumps(new)
        upsert_runs(run.connection, [answer])
    else:
        record.response = json.dumps(answer) if answer is not None else ""
    record.save()
    return record


def triggered_by_user(run: Run, user) -> bool:
    """With separation of duties on, whether the platform says `user` triggered `run`
    (its username, full name or e-mail, compared without case)."""
    if not settings.RUNBOARD_SEPARATION_OF_DUTIES or not run.triggered_by:
        return False
    names = {user.get_username(), user.get_full_name(), getattr(user, "email", "")}
    return run.triggered_by.strip().casefold() in {n.strip().casefold() for n in names if n}


def _plain_words(exc: ProviderError) -> str:
    if isinstance(exc, RateLimited):
        at = timezone.localtime(timezone.now() + timedelta(seconds=exc.retry_after))
        return f"The provider is rate limiting us; try again at {at:%H:%M:%S}."
    return f"The provider refused: {exc.message}"
