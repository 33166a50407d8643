"""The one small interface every provider module implements.

A provider module holds a `Provider` subclass (the HTTP client), its status map and
its payload parsing. The sync engine and the views only ever see what is defined
here: normalized `RunData`/`JobData`, the shared `Status` vocabulary, `Action`s and
typed `ProviderError`s.
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
from django.db import models

logger = logging.getLogger(__name__)


class Status(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLING = "cancelling", "Cancelling"
    CANCELLED = "cancelled", "Cancelled"
    SKIPPED = "skipped", "Skipped"
    UNKNOWN = "unknown", "Unknown"


FINISHED = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.SKIPPED})


class Action(models.TextChoices):
    CANCEL = "cancel", "Cancel"
    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"
    RETRY = "retry", "Retry"


def map_status(provider: str, status_map: Mapping[str, Status], raw: Any) -> Status:
    """Map a provider's raw status; an unrecognised value is logged, never fatal."""
    try:
        return status_map[raw]
    except (KeyError, TypeError):
        logger.warning("%s: unrecognised status %r mapped to unknown", provider, raw)
        return Status.UNKNOWN


# --- typed errors -----------------------------------------------------------------


class ProviderError(Exception):
    """Base of every error a provider call raises; `message` is safe to show a user."""

    user_message = "The provider returned an error."

    def __init__(self, message: str = "", *, status_code: int | None = None, body: str = ""):
        self.message = message or self.user_message
        self.status_code = status_code
        self.body = body[:2000]
        super().__init__(self.message)


class AuthError(ProviderError):
    user_message = "The provider refused the token (not authorised or not permitted)."


class NotFound(ProviderError):
    user_message = "The provider does not know this run."


class Conflict(ProviderError):
    user_message = "The provider refused: the run is not in a state that allows this."


class InvalidRequest(ProviderError):
    user_message = "The provider rejected the request."


class RateLimited(ProviderError):
    user_message = "The provider is rate limiting us."

    def __init__(self, message: str = "", *, retry_after: float = 60.0, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class Unavailable(ProviderError):
    user_message = "The provider is unreachable or failing."


class BadPayload(ProviderError):
    user_message = "The provider sent a response Runboard cannot read."


class NotSupported(ProviderError):
    user_message = "This provider does not support that action."


# --- normalized data --------------------------------------------------------------


@dataclass
class ProjectData:
    external_id: str
    name: str


@dataclass
class EnvironmentData:
    external_id: str
    name: str
    project: ProjectData | None = None


@dataclass
class JobData:
    external_id: str
    name: str
    status: Status
    raw_status: str
    order: int = 0
    environment: EnvironmentData | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reviewed_by: str = ""
    reviewed_at: datetime | None = None
    review_comment: str = ""
    review_conclusion: str = ""
    progress: int | None = None


@dataclass
class RunData:
    external_id: str
    status: Status
    raw_status: str
    # Whatever the provider needs to address this run again (ids, stage, ...).
    locator: dict[str, Any]
    name: str = ""
    version: str = ""
    branch: str = ""
    commit: str = ""
    triggered_by: str = ""
    pipeline_id: str = ""
    pipeline_name: str = ""
    project: ProjectData | None = None
    environment: EnvironmentData | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancelled_by: str = ""
    cancel_comment: str = ""
    web_url: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    jobs: list[JobData] = field(default_factory=list)
    # When we received this payload: orders two payloads of the same run.
    observed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED


@dataclass
class Discovery:
    projects: list[ProjectData] = field(default_factory=list)
    environments: list[EnvironmentData] = field(default_factory=list)
    pipelines: list[dict[str, str]] = field(default_factory=list)


@dataclass
class RateLimitInfo:
    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None  # epoch seconds, where the provider says


# --- parsing helpers shared by providers -----------------------------------------


def parse_time(value: Any) -> datetime | None:
    """Parse the ISO-8601 variants the providers send ("2021-01-01 12:01:00.000Z", ...)."""
    if value in (None, "") or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        logger.warning("unparseable timestamp %r", value)
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def text(value: Any, limit: int = 500) -> str:
    """Provider text as a bounded string (it is escaped at render time, never trusted)."""
    if value is None:
        return ""
    return str(value)[:limit]


def require(payload: Any, key: str) -> Any:
    """A field the API documents as required; its absence means a bad payload."""
    if not isinstance(payload, dict) or payload.get(key) in (None, ""):
        raise BadPayload(f"response is missing required field {key!r}")
    return payload[key]


def retry_after_seconds(response: httpx.Response, default: float = 60.0) -> float:
    value = response.headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value)
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
    return default


# --- the interface ----------------------------------------------------------------


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings every provider client shares (certificate checks on, the CA
    bundle and SSL_CERT_FILE as httpx reads them): building them loads the CA bundle,
    about 30 ms of CPU, which each client (every pass, action and webhook read) paid."""
    return httpx.create_ssl_context()


class Provider:
    """Base class of a provider client: one instance per connection and sync.

    Subclasses set the class attributes, implement the abstract methods and, where
    their API differs, override `auth_headers`, `error_message` and `rate_limit_info`.
    """

    key: ClassVar[str]
    label: ClassVar[str]
    # Templates get the class itself (for its label and capabilities): never call it.
    do_not_call_in_templates: ClassVar[bool] = True
    actions: ClassVar[frozenset[Action]] = frozenset()
    has_force_cancel: ClassVar[bool] = False
    force_cancel_help: ClassVar[str] = ""  # what forcing does, shown beside the checkbox
    # Waiting states only the provider's own UI resolves (raw status -> why): no approve.
    waiting_elsewhere: ClassVar[Mapping[str, str]] = {}
    cancel_requires_comment: ClassVar[bool] = False
    # Raw statuses of a run that asks for variables before it is approved (see
    # `requested_variables`): lists read the stored payload only for these.
    variables_statuses: ClassVar[frozenset[str]] = frozenset()
    # Why an action the platform lacks cannot be offered, in one line for the run page.
    unsupported_reasons: ClassVar[Mapping[str, str]] = {}
    # True where actions address the environment's current deployment rather than one
    # run (Qovery): only an environment's newest run can be acted on.
    acts_on_environment: ClassVar[bool] = False
    # Scope keys the connection must set (e.g. the workspace), and optional ones.
    scope_required: ClassVar[tuple[str, ...]] = ()
    scope_optional: ClassVar[tuple[str, ...]] = ()
    status_map: ClassVar[Mapping[str, Status]] = {}
    default_base_url: ClassVar[str] = ""

    def __init__(
        self,
        base_url: str,
        token: str,
        scope: Mapping[str, Any] | None = None,
        *,
        timeout: float = 10.0,
        rate_limit_reserve: int = 2,
    ):
        self.base_url = base_url.rstrip("/")
        self.rate_limit_reserve = rate_limit_reserve
        self.scope = dict(scope or {})
        missing = [k for k in self.scope_required if not self.scope.get(k)]
        if missing:
            raise InvalidRequest(f"{self.label} connection needs scope {', '.join(missing)}")
        self.rate_limit = RateLimitInfo()
        self.requests_made = 0
        # external_id -> raw status Runboard holds for runs in the sync's window: lets a
        # provider whose list is a short view skip re-reading runs that did not change.
        self.known_runs: Mapping[str, str] = {}
        self.rate_limited_responses = 0  # answers of 429 (for the operators' metrics)
        # What a provider remembers between passes to skip reading what did not change
        # (JSON-able, provider-defined: fingerprints of list-level state). The sync hands
        # in what the last successful pass left, and stores it again only after a pass
        # succeeded; `full_read` (set by the sync when there is no state, or the
        # connection was edited) tells the provider to read everything in detail,
        # whatever it remembers.
        self.change_state: dict[str, Any] = {}
        # What a webhook read found that the next pass may skip by, as parts of
        # `change_state` ({part: {key: value}}): the read merges it into what the last
        # pass left (dashboard/webhooks.py), so the pass does not read it again.
        self.learned: dict[str, dict[str, Any]] = {}
        self.full_read = True
        # What change detection skips is still re-read now and then, a few things a pass
        # (`rotation`): each at least this often (seconds; the sync sets it from
        # RUNBOARD_FULL_READ_EVERY), as of `clock()` (epoch seconds).
        self.reread_every = 3600.0
        self.clock: Callable[[], float] = time.time
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={**self.auth_headers(token), "Accept": "application/json"},
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            verify=tls_context(),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- what a provider implements -----------------------------------------------

    def discover(self) -> Discovery:
        raise NotImplementedError

    def list_runs(self, since: datetime | None = None) -> Iterator[list[RunData]]:
        """Yield pages of runs, newest first; stop once a page is older than `since`."""
        raise NotImplementedError

    def get_run(self, locator: Mapping[str, Any]) -> RunData:
        raise NotImplementedError

    def cancel(self, locator: Mapping[str, Any], comment: str = "", force: bool = False):
        raise NotSupported()

    def approve(self, locator: Mapping[str, Any], comment: str = "",
                variables: Mapping[str, str] | None = None):
        """`variables`: values for what the run asks for (see `requested_variables`)."""
        raise NotSupported()

    def reject(self, locator: Mapping[str, Any], comment: str = ""):
        raise NotSupported()

    def retry(self, locator: Mapping[str, Any]):
        raise NotSupported()

    @classmethod
    def requested_variables(cls, raw: Any) -> list[dict[str, str]]:
        """Variables a waiting run asks for before it can be approved, from its stored
        payload: [{key, value (the default), description}]; most providers ask none."""
        return []

    def rotation(self, name: str) -> Rotation:
        """The safety re-read of what change detection skips, as `change_state[name]`
        left it (the provider stores `Rotation.state()` there again)."""
        return Rotation(self.change_state.get(name), self.clock(), self.reread_every)

    # -- shared HTTP plumbing -----------------------------------------------------

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def map_status(self, raw: Any) -> Status:
        return map_status(self.key, self.status_map, raw)

    def error_message(self, body: Any) -> str:
        """Pull the provider's own error message out of an error body."""
        if isinstance(body, dict):
            for key in ("message", "error", "detail"):
                value = body.get(key)
                if isinstance(value, str):
                    return value
                if isinstance(value, dict) and isinstance(value.get("message"), str):
                    return value["message"]
        return ""

    def rate_limit_info(self, response: httpx.Response) -> RateLimitInfo:
        return RateLimitInfo()

    def request(self, method: str, path: str, **kwargs) -> Any:
        """Send one request and return its decoded JSON, or raise a typed error."""
        remaining = self.rate_limit.remaining
        if remaining is not None and remaining <= self.rate_limit_reserve:
            # Stop before the provider has to refuse us; the pass resumes after the reset.
            raise RateLimited(
                f"{self.label} rate limit nearly used up ({remaining} requests left)",
                retry_after=self.seconds_until_reset(),
            )
        self.requests_made += 1
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise Unavailable(
                f"{self.label} did not answer in time ({exc.__class__.__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise Unavailable(f"{self.label} is unreachable: {exc}") from exc
        info = self.rate_limit_info(response)
        if info.limit is not None or info.remaining is not None:
            self.rate_limit = info
        if response.is_success:
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError as exc:
                raise BadPayload(
                    f"{self.label} sent a response that is not JSON",
                    status_code=response.status_code, body=response.text,
                ) from exc
        self.raise_for_status(response)

    def raise_for_status(self, response: httpx.Response) -> None:
        try:
            body = response.json()
        except ValueError:
            body = None
        message = text(self.error_message(body), 300)
        kwargs = {"status_code": response.status_code, "body": response.text}
        code = response.status_code
        if code == 429:
            self.rate_limited_responses += 1
            raise RateLimited(
                message or f"{self.label} is rate limiting requests",
                retry_after=self.retry_after(response), **kwargs,
            )
        if code in (401, 403):
            raise AuthError(message or AuthError.user_message, **kwargs)
        if code == 404:
            raise NotFound(message or NotFound.user_message, **kwargs)
        if code == 409:
            raise Conflict(message or Conflict.user_message, **kwargs)
        if code >= 500:
            raise Unavailable(message or f"{self.label} answered {code}", **kwargs)
        raise InvalidRequest(message or f"{self.label} answered {code}", **kwargs)

    def retry_after(self, response: httpx.Response) -> float:
        return retry_after_seconds(response)

    def seconds_until_reset(self) -> float:
        if self.rate_limit.reset_at is not None:
            return max(1.0, self.rate_limit.reset_at - time.time())
        return 60.0  # the provider does not say when its window resets


    # -- webhooks and rate budgets (appended; each provider overrides at its end) ------

    # Event names the platform sends that Runboard subscribes to; empty: no webhooks.
    webhook_events: ClassVar[tuple[str, ...]] = ()
    # Setup steps shown on the connections page; {url} is filled in.
    webhook_setup: ClassVar[str] = ""
    # The documented request allowance; None: none is documented (CONSERVATIVE_BUDGET).
    rate_budget: ClassVar[RateBudget | None] = None
    # Requests one hint's read usually costs (`runs_from_webhook`), for the budget.
    webhook_read_cost: ClassVar[int] = 1

    @classmethod
    def webhook_secret(cls, headers: Mapping[str, str], query: Mapping[str, str],
                       body: bytes) -> str:
        """The secret a delivery presents (the caller compares it in constant time)."""
        raise WebhookRejected("this provider sends no webhooks", 404)

    @classmethod
    def parse_webhook(cls, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """What a delivery names; WebhookRejected for anything malformed."""
        raise WebhookRejected("this provider sends no webhooks", 404)

    def runs_from_webhook(self, event: WebhookEvent) -> list[RunData]:
        """Read the runs a delivery names back from the API (never from the body)."""
        return [self.get_run(locator) for locator in event.hints]

    @classmethod
    def budget_for(cls, seen_limit: int | None = None) -> RateBudget:
        """The allowance to plan with: the documented one, else the conservative default.
        `seen_limit` is the last rate-limit header the provider sent (if any)."""
        return cls.rate_budget or CONSERVATIVE_BUDGET


# --- webhooks and rate budgets: shared data ---------------------------------------


class WebhookRejected(Exception):
    """A delivery Runboard refuses: `status` is the 4xx to answer, `message` the log line."""

    def __init__(self, message: str, status: int = 400):
        self.message, self.status = message, status
        super().__init__(message)


@dataclass
class WebhookEvent:
    """What a verified delivery asks for: which runs to re-read from the API.

    Nothing in it is the run's state: a body only names what changed; the run itself
    is always read back from the provider (`Provider.runs_from_webhook`).
    """

    event: str
    delivery_id: str = ""  # the provider's id of this delivery, where it sends one
    # Locators (as get_run takes them) of runs to re-read; empty: re-read the run list.
    hints: list[dict[str, Any]] = field(default_factory=list)
    relevant: bool = True  # False: an event about something else (a build, a backup)


@dataclass(frozen=True)
class RateBudget:
    """A provider's request allowance: `requests` per `window` seconds."""

    requests: int
    window: float
    documented: bool = True

    @property
    def per_hour(self) -> float:
        return self.requests * 3600.0 / self.window


# No limit documented: plan with this little, so an undocumented limit is not hit.
CONSERVATIVE_BUDGET = RateBudget(600, 3600.0, documented=False)


def webhook_header(headers: Mapping[str, str], name: str) -> str:
    """A header by case-insensitive name ("" when absent)."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return ""


def webhook_json(body: bytes) -> dict[str, Any]:
    """A delivery's body as a JSON object, or WebhookRejected."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected("body is not JSON") from None
    if not isinstance(data, dict):
        raise WebhookRejected("body is not a JSON object")
    return data


class Rotation:
    """A safety re-read spread over passes instead of one full read now and then.

    Change detection skips what a provider's list says did not change; should a list
    ever miss a change, re-reading everything once an hour would find it, at the cost
    of one burst that holds the budget clock back. Instead each pass re-reads a few of
    the skipped keys, those read least recently, paced so that every key is read again
    within `every` seconds: a pass `elapsed` seconds after the last one earns
    keys x elapsed / (every - elapsed) reads (its fraction carried over as `credit`), and
    a key that would pass `every` before the next pass (taken to come as soon again)
    is read now whatever the pace. A key never read is read at once.
    """

    def __init__(self, state: Any, now: float, every: float):
        state = state if isinstance(state, dict) else {}
        read_at = state.get("read_at")
        self.read_at: dict[str, float] = {
            str(key): float(at) for key, at in (read_at or {}).items()
            if isinstance(at, int | float)} if isinstance(read_at, dict) else {}
        last = state.get("at")
        self.elapsed = max(0.0, now - last) if isinstance(last, int | float) else 0.0
        credit = state.get("credit")
        self.credit = float(credit) if isinstance(credit, int | float) else 0.0
        self.now, self.every = now, max(1.0, every)

    def age(self, key: str) -> float:
        at = self.read_at.get(key)
        return float("inf") if at is None else self.now - at

    def pick(self, skipped: Iterable[str]) -> set[str]:
        """Which of the keys change detection skips to read anyway this pass."""
        keys = set(skipped)
        new = {key for key in keys if key not in self.read_at}  # not part of the pace
        keys = sorted(keys - new, key=lambda key: (-self.age(key), key))
        if not keys:
            return new
        margin = min(self.elapsed, self.every / 2)  # the next pass, guessed as this one
        allowed = self.credit + len(keys) * self.elapsed / (self.every - margin)
        overdue = sum(1 for key in keys if self.age(key) + margin >= self.every)
        count = min(len(keys), max(int(allowed), overdue))
        # Reads forced ahead of the pace are paid back by later passes; a long gap
        # earns no more than one round.
        self.credit = max(-len(keys), min(allowed - count, 1.0))
        return new | set(keys[:count])

    def read(self, key: str) -> None:
        """`key` was read in detail this pass (picked, changed, or never skipped)."""
        self.read_at[key] = self.now

    def state(self, keys: Iterable[str]) -> dict[str, Any]:
        """What to remember for the next pass, for the keys that still exist."""
        return {"at": self.now, "credit": round(self.credit, 6), "read_at": {
            key: self.read_at[key] for key in keys if key in self.read_at}}
