"""Acting on a run: the one path buttons and the JSON API share.

Every attempt leaves an ActionRecord (who, when, comment, options, the provider's
answer), refusals included. At most one provider call per action intent, under any
interleaving of requests: the claim (re-reading the run, checking what is in flight
or already done, inserting the pending record) is one transaction holding the run's
row lock (SELECT ... FOR UPDATE on PostgreSQL; on SQLite every transaction begins
IMMEDIATE, so claims run one at a time), and an outcome is written in the order a
claim reads it: the run's new state first, then the record leaves *pending*. The
provider call itself happens outside any transaction.

A provider that times out, drops the connection or answers something unreadable may
well have carried the action out: that outcome is *unknown*, never *failed*. The run
is re-read at once and the record reconciled from what it shows.
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
from providers.base import (
    Action,
    BadPayload,
    ProviderError,
    RateLimited,
    RunData,
    Status,
    Unavailable,
)

logger = logging.getLogger(__name__)

# A pending record older than this belongs to a request that died mid-flight.
PENDING_EXPIRY = timedelta(minutes=2)

# What a run shows once an action was carried out: how an unknown outcome is reconciled.
EFFECT = {
    Action.CANCEL: {Status.CANCELLING, Status.CANCELLED},
    Action.APPROVE: {Status.QUEUED, Status.RUNNING, Status.SUCCEEDED},
    Action.REJECT: {Status.FAILED, Status.CANCELLING, Status.CANCELLED, Status.SKIPPED},
    Action.RETRY: {Status.QUEUED, Status.RUNNING, Status.WAITING, Status.SUCCEEDED},
}
# What a run shows when the action was evidently not carried out (an approved run may
# still fail, and a retry starts another run: neither says anything then).
NOT_DONE = {
    Action.CANCEL: {Status.SUCCEEDED, Status.FAILED, Status.SKIPPED},
    Action.REJECT: {Status.SUCCEEDED},
}
State = ActionRecord.State


class ActionRefused(Exception):
    """The action was not sent, or the provider refused it; `message` is for the user."""

    def __init__(self, message: str, record: ActionRecord | None = None, status: int = 409):
        super().__init__(message)
        self.message, self.record, self.status = message, record, status


class OutcomeUnknown(ActionRefused):
    """No usable answer came, and re-reading the run did not show the action done."""


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
    """Send `kind` to the provider once; return the record, or raise ActionRefused.

    `variables`: values for what a waiting run asks for (approve only, e.g. Buddy's
    APPLY_VARIABLES); the audit keeps their names, not their values. A record reconciled
    after an unknown outcome carries `notice`, what to tell the user.
    """
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

    record, reason = _claim(run, user, kind, comment, options)
    if reason:
        raise ActionRefused(reason, record)
    before = run.status
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
    except (Unavailable, BadPayload) as exc:
        return _unknown(run, record, before, exc.message, exc.status_code, exc.body)
    except ProviderError as exc:
        _finish(record, State.FAILED, exc.status_code, exc.body or exc.message)
        raise ActionRefused(_plain_words(exc), record, status=502) from exc
    except Exception as exc:  # a bug after the request may have left: not a refusal
        logger.exception("%s of run %s: no usable answer", kind, run.pk)
        return _unknown(run, record, before, f"Runboard could not read the answer ({exc!r})")
    finally:
        if client is not None:
            count_requests(run.connection_id, client)

    # Written before the record leaves pending: a claim that sees no pending record
    # sees the run as the answer left it.
    record.finished_at = timezone.now()
    if isinstance(answer, RunData):
        new = {"status": answer.raw_status, "normalized": answer.status.value}
        if answer.external_id != run.external_id:  # e.g. a retry that started a new run
            new["run"] = answer.external_id
        response = json.dumps(new)
        upsert_runs(run.connection, [answer])
    else:
        response = json.dumps(answer) if answer is not None else ""
    _finish(record, State.SUCCEEDED, 200, response)
    return record


def triggered_by_user(run: Run, user) -> bool:
    """With separation of duties on, whether the platform says `user` triggered `run`
    (its username, full name or e-mail, compared without case)."""
    if not settings.RUNBOARD_SEPARATION_OF_DUTIES or not run.triggered_by:
        return False
    names = {user.get_username(), user.get_full_name(), getattr(user, "email", "")}
    return run.triggered_by.strip().casefold() in {n.strip().casefold() for n in names if n}


def _claim(run: Run, user, kind: str, comment: str, options: dict):
    """Record the attempt: pending if this request may call the provider, else failed
    with Runboard's reason. Returns (record, reason)."""
    with transaction.atomic():
        list(Run.objects.select_for_update().filter(pk=run.pk).values_list("pk"))
        run.refresh_from_db()
        now = timezone.now()
        ActionRecord.objects.filter(
            run=run, kind=kind, state=State.PENDING, created_at__lt=now - PENDING_EXPIRY,
        ).update(state=State.UNKNOWN, finished_at=now,
                 response="Interrupted: Runboard recorded no answer. Check the run's state.")
        reason = (_in_flight(run, kind) or refusal(run, kind, user)
                  or _already_done(run, kind))
        if reason is None:
            try:
                with transaction.atomic():
                    record = ActionRecord.objects.create(
                        run=run, user=user, kind=kind, comment=comment, options=options,
                        status_before=run.status)
                return record, None
            except IntegrityError:  # the lock makes this unreachable; the constraint stays
                reason = f"Another {kind} of this run is already in flight; wait for its answer."
        record = ActionRecord.objects.create(
            run=run, user=user, kind=kind, comment=comment, options=options,
            status_before=run.status, state=State.FAILED,
            response=f"Refused by Runboard: {reason}", finished_at=now,
        )
        return record, reason


def _in_flight(run: Run, kind: str) -> str | None:
    pending = (ActionRecord.objects.filter(run=run, kind=kind, state=State.PENDING)
               .select_related("user").first())
    if pending:
        return (f"Another {kind} of this run is already in flight (sent by {pending.user} "
                f"at {_clock(pending.created_at)}); wait for its answer.")
    return None


def _already_done(run: Run, kind: str) -> str | None:
    """Done, and the run has not changed since its answer: the same intent again (an
    answer that does not show the run's new state leaves the state check no wiser)."""
    done = (ActionRecord.objects.filter(run=run, kind=kind, finished_at__gte=run.updated_at,
                                        state__in=[State.SUCCEEDED, State.RECONCILED])
            .select_related("user").first())
    if done:
        return (f"A {kind} of this run was already sent by {done.user} at "
                f"{_clock(done.created_at)}; the run has not changed since. Wait for it to show.")
    return None


def _unknown(run: Run, record: ActionRecord, before: str, error: str,
             code: int | None = None, body: str = "") -> ActionRecord:
    """No usable answer: re-read the run at once and reconcile the record from it."""
    label = run.connection.provider_class.label
    told = f"No answer came from {label} ({error})."
    now_shows = None
    client = None
    try:
        with run.connection.client() as client:
            upsert_runs(run.connection, [client.get_run(run.locator)])
        run.refresh_from_db()
        now_shows = run.status
    except ProviderError as exc:
        told += f" Runboard could not re-read the run either ({exc.message})."
    finally:
        if client is not None:
            count_requests(run.connection_id, client)
    if now_shows is not None:
        told += f" Runboard re-read the run: it is now {run.get_status_display().lower()}"
    if now_shows is not None and now_shows != before and now_shows in EFFECT[record.kind]:
        told += f", so the {record.kind} was carried out."
        _finish(record, State.RECONCILED, code, _with_body(told, body))
        record.notice = told
        return record
    told += ("." if now_shows is not None else "") + (
        f" The {record.kind} may or may not have been carried out: check the run's state "
        f"before trying again.")
    _finish(record, State.UNKNOWN, code, _with_body(told, body))
    raise OutcomeUnknown(told, record, status=502)


def settle_unknown(run_ids) -> int:
    """After the sync wrote these runs: settle each unknown outcome on them that the run
    now answers. A run that moved into the action's effect says it was carried out; a run
    that finished some other way says it was not. Each settlement is a record of its own
    (the unknown one is frozen), one per unknown record. Returns how many were settled."""
    # Unsettled unknown outcomes are rare (the partial index holds unknown ones only):
    # find them all, then keep those on these runs, rather than look up every run written.
    run_ids = set(run_ids)
    pks = [pk for pk, run_id in ActionRecord.objects.filter(
        state=State.UNKNOWN, settled_by__isnull=True).values_list("pk", "run_id")
        if run_id in run_ids]
    if not pks:
        return 0
    settled = 0
    for record in ActionRecord.objects.filter(pk__in=pks).select_related("run",
                                                                         "run__connection"):
        run = record.run
        if run.updated_at <= record.finished_at or run.status == record.status_before:
            continue  # nothing new to judge by
        label = run.connection.provider_class.label
        shows = run.get_status_display().lower()
        if run.status in EFFECT[record.kind]:
            state, told = State.RECONCILED, "was carried out"
        elif run.status in NOT_DONE.get(record.kind, ()):
            state, told = State.FAILED, "was not carried out"
        else:
            continue
        try:
            with transaction.atomic():
                ActionRecord.objects.create(
                    run=run, user=record.user, kind=record.kind, options=record.options,
                    status_before=record.status_before, state=state, settles=record,
                    finished_at=timezone.now(),
                    response=(f"Settles the {record.kind} sent at {_clock(record.created_at)}, "
                              f"whose answer never came: {label} now shows the run {shows}, "
                              f"so the {record.kind} {told}."))
            settled += 1
        except IntegrityError:  # another writer settled it first
            pass
    return settled


def _with_body(told: str, body: str) -> str:
    return f"{told}\nProvider's answer: {body}" if body else told


def _finish(record: ActionRecord, state: str, code: int | None, response: str) -> None:
    record.state, record.response_code, record.response = state, code, response
    record.finished_at = record.finished_at or timezone.now()
    record.save()


def _clock(at) -> str:
    return f"{timezone.localtime(at):%H:%M:%S}"


def _plain_words(exc: ProviderError) -> str:
    if isinstance(exc, RateLimited):
        at = timezone.localtime(timezone.now() + timedelta(seconds=exc.retry_after))
        return f"The provider is rate limiting us; try again at {at:%H:%M:%S}."
    return f"The provider refused: {exc.message}"
