"""A small framework for provider simulators: real HTTP servers on loopback.

Each simulator subclasses `Simulator`, registers its documented routes and renders
its own payloads from `SimRun`s. Runs move through a scripted lifecycle as the
simulator's clock advances (real time in the demo, `advance()` in tests). Faults
are injected from Python (`sim.inject(...)`) or over HTTP (`POST /_sim/faults`),
so a separate process (the demo, a Celery worker's test) can drive them too.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)


class SimClock:
    """Simulated time: wall time times `speed`, plus whatever tests `advance()`."""

    def __init__(self, speed: float = 1.0, start: datetime | None = None):
        self.speed = speed
        self._origin = start or datetime.now(UTC)
        self._mono = time.monotonic()
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            elapsed = (time.monotonic() - self._mono) * self.speed + self._offset
        return self._origin + timedelta(seconds=elapsed)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds


@dataclass
class Phase:
    status: str
    seconds: float | None  # None: stays until an action moves it on


@dataclass
class SimRun:
    """One run in a simulator, moving through `plan` as simulated time passes."""

    id: Any
    plan: list[Phase]
    created_at: datetime
    data: dict[str, Any] = field(default_factory=dict)
    phase: int = 0
    phase_started_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    history: list[tuple[str, datetime]] = field(default_factory=list)

    def __post_init__(self):
        self.phase_started_at = self.phase_started_at or self.created_at
        self.updated_at = self.created_at
        self.history.append((self.status, self.created_at))

    @property
    def status(self) -> str:
        return self.plan[self.phase].status

    def tick(self, now: datetime, running: set[str], final: set[str]) -> None:
        while self.phase < len(self.plan) - 1:
            seconds = self.plan[self.phase].seconds
            if seconds is None:
                return
            ends = self.phase_started_at + timedelta(seconds=seconds)
            if ends > now:
                return
            self._enter(self.phase + 1, ends, running, final)

    def _enter(self, index: int, at: datetime, running: set[str], final: set[str]) -> None:
        self.phase, self.phase_started_at, self.updated_at = index, at, at
        if self.status in running and self.started_at is None:
            self.started_at = at
        if self.status in final:
            self.finished_at = at
        self.history.append((self.status, at))

    def replace_plan(self, plan: list[Phase], now: datetime, running: set[str], final: set[str]):
        """Switch to a new lifecycle from now on (cancel, approve, retry)."""
        self.plan = self.plan[: self.phase + 1] + plan
        self._enter(self.phase + 1, now, running, final)


class HttpError(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    params: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Any]

FAULT_KINDS = {
    "rate_limit", "error_500", "error_503", "slow", "malformed", "unknown_status",
    "missing_fields", "disconnect",
}


class Simulator:
    """Base of every provider simulator."""

    name = "simulator"
    running_statuses: set[str] = set()
    final_statuses: set[str] = set()
    # The unknown value served by the `unknown_status` fault.
    unknown_status_value = "SOMETHING_NEW"
    # Requests allowed per window (wall-clock seconds); past it the simulator answers 429.
    rate_limit = 1000
    rate_window = 60.0

    def __init__(self, token: str = "sim-token", *, clock: SimClock | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        self.token = token
        self.clock = clock or SimClock()
        self.lock = threading.RLock()
        self.runs: dict[Any, SimRun] = {}
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, body), for tests
        self.request_times: list[float] = []  # time.monotonic() of each, beside `requests`
        self._faults: list[dict[str, Any]] = []
        self._window_started: float | None = None  # set by the window's first request
        self._window_count = 0
        self._routes: list[tuple[str, re.Pattern, Handler]] = []
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.routes()

    # -- what a simulator implements -----------------------------------------------

    def routes(self) -> None:
        raise NotImplementedError

    def authorised(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {self.token}"

    def auth_error(self) -> HttpError:
        return HttpError(401, {"message": "Unauthorized"})

    def error_body(self, status: int, message: str) -> Any:
        return {"message": message}

    def rate_limit_headers(self, retry_after: int) -> dict[str, str]:
        return {"Retry-After": str(retry_after)}

    def response_headers(self) -> dict[str, str]:
        return {}

    def rate_limit_remaining(self) -> int:
        with self.lock:
            return max(0, self.rate_limit - self._window_count)

    def rate_clock(self) -> float:
        """Seconds on the clock rate windows are measured with; a subclass may use its SimClock."""
        return time.monotonic()

    def seconds_to_window_reset(self) -> int:
        with self.lock:
            if self._window_started is None:
                return int(self.rate_window)
            return max(1, int(self.rate_window - (self.rate_clock() - self._window_started)) + 1)

    def seed_demo(self, rng) -> dict[str, str]:
        """Fill the simulator with sample runs for the demo; return the connection scope."""
        raise NotImplementedError

    def spawn_demo(self, rng) -> None:
        """Add one new run, as the demo does every few seconds."""
        raise NotImplementedError

    # -- route table ------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method, re.compile(f"^{regex}/?$"), handler))

    def dispatch(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        if request.path.startswith("/_sim/"):
            return 200, self.control(request), {}
        with self.lock:
            self.requests.append((request.method, request.path, request.body))
            self.request_times.append(time.monotonic())
            now = self.rate_clock()
            if self._window_started is None or now - self._window_started >= self.rate_window:
                self._window_started, self._window_count = now, 0
            self._window_count += 1
            if self._window_count > self.rate_limit:
                return self._fault_response({"kind": "rate_limit", "retry_after": int(
                    self.rate_window - (now - self._window_started)) + 1})
        fault = self._take_fault()
        if fault and fault["kind"] in {"rate_limit", "error_500", "error_503"}:
            return self._fault_response(fault)
        if fault and fault["kind"] == "slow":
            time.sleep(fault.get("seconds", 5))
        if not self.authorised(request.headers):
            err = self.auth_error()
            return err.status, err.body, err.headers
        for method, regex, handler in self._routes:
            match = regex.match(request.path)
            if match and method == request.method:
                request.params = match.groupdict()
                try:
                    with self.lock:
                        self.tick()
                        body = handler(request)
                except HttpError as err:
                    return err.status, err.body, err.headers
                if fault and fault["kind"] == "unknown_status":
                    body = self.with_unknown_status(body)
                if fault and fault["kind"] == "missing_fields":
                    body = self.without_optional_fields(body)
                if fault and fault["kind"] == "malformed":
                    return 200, b'{"truncated": ', {}
                if fault and fault["kind"] == "disconnect":
                    return -1, None, {}
                return 200, body, self.response_headers()
        known_path = any(regex.match(request.path) for _, regex, _ in self._routes)
        status = 405 if known_path else 404
        return status, self.error_body(status, "Not found"), {}

    def _fault_response(self, fault: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if fault["kind"] == "rate_limit":
            retry_after = int(fault.get("retry_after", 2))
            return 429, self.error_body(429, "Too many requests"), self.rate_limit_headers(
                retry_after
            )
        status = 500 if fault["kind"] == "error_500" else 503
        return status, self.error_body(status, "Internal error"), {}

    def with_unknown_status(self, body: Any) -> Any:
        """Replace every `status` value in the body with one no client knows."""
        if isinstance(body, dict):
            return {
                k: (self.unknown_status_value if k in ("status", "state") and isinstance(v, str)
                    else self.with_unknown_status(v))
                for k, v in body.items()
            }
        if isinstance(body, list):
            return [self.with_unknown_status(v) for v in body]
        return body

    def without_optional_fields(self, body: Any) -> Any:
        """Drop the fields a provider documents as optional; subclasses narrow this."""
        return body

    # -- faults and control -----------------------------------------------------------

    def inject(self, kind: str, times: int = 1, *, after: int = 0, **options: Any) -> None:
        """Make the next `times` requests fail with `kind`, once `after` more have passed."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}")
        with self.lock:
            self._faults.extend([{"kind": "none"}] * after)
            self._faults.extend({"kind": kind, **options} for _ in range(times))

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def _take_fault(self) -> dict[str, Any] | None:
        with self.lock:
            return self._faults.pop(0) if self._faults else None

    def control(self, request: Request) -> Any:
        """`/_sim/` endpoints: faults, clock and state, for tests in other processes."""
        body = request.body or {}
        if request.path == "/_sim/faults" and request.method == "POST":
            self.inject(body["kind"], int(body.get("times", 1)), **body.get("options", {}))
        elif request.path == "/_sim/faults" and request.method == "DELETE":
            self.clear_faults()
        elif request.path == "/_sim/advance" and request.method == "POST":
            self.advance(float(body.get("seconds", 0)))
        with self.lock:
            self.tick()
            return {
                "now": self.clock.now().isoformat(),
                "faults": len(self._faults),
                "runs": {str(k): r.status for k, r in self.runs.items()},
            }

    # -- lifecycle --------------------------------------------------------------------

    def add_run(self, run_id: Any, plan: list[Phase], *, created_at: datetime | None = None,
                **data: Any) -> SimRun:
        with self.lock:
            run = SimRun(id=run_id, plan=plan, created_at=created_at or self.clock.now(),
                         data=data)
            if run.status in self.running_statuses:
                run.started_at = run.created_at
            self.runs[run_id] = run
            run.tick(self.clock.now(), self.running_statuses, self.final_statuses)
            return run

    def tick(self) -> None:
        now = self.clock.now()
        with self.lock:
            for run in self.runs.values():
                run.tick(now, self.running_statuses, self.final_statuses)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.tick()

    def transition(self, run: SimRun, plan: list[Phase]) -> None:
        run.replace_plan(plan, self.clock.now(), self.running_statuses, self.final_statuses)

    def get(self, run_id: Any) -> SimRun:
        try:
            return self.runs[run_id]
        except KeyError:
            raise HttpError(404, self.error_body(404, "Not found")) from None

    # -- server -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server, "simulator not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Simulator:
        sim = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes; with Nagle on, a kept-alive
            # connection's second write waits out the client's delayed ACK (~40 ms).
            disable_nagle_algorithm = True

            def _handle(self):
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    self._send(400, sim.error_body(400, "Malformed JSON body"), {})
                    return
                request = Request(
                    method=self.command,
                    path=split.path,
                    query={k: v[-1] for k, v in parse_qs(split.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                try:
                    status, payload, headers = sim.dispatch(request)
                except Exception:  # a simulator bug must show as a 500, not a hang
                    logger.exception("%s: handler failed", sim.name)
                    status, payload, headers = 500, sim.error_body(500, "simulator error"), {}
                if status == -1:  # injected fault: drop the connection without answering
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._send(status, payload, headers)

            def _send(self, status, payload, headers):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

            def log_message(self, format, *args):
                logger.debug("%s: " + format, sim.name, *args)

        self._server = ThreadingHTTPServer((self._host, self._port), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"sim-{self.name}")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- webhooks (appended) ----------------------------------------------------------

    def webhook_deliveries(self, run: SimRun, before: str | None,
                           secret: str) -> list[Delivery]:
        """The deliveries the platform sends when `run` moved from `before` (None: it is
        new) to its current status. None by default: a platform without webhooks."""
        return []

    def send_webhooks(self, url: str, secret: str, interval: float = 0.05) -> WebhookSender:
        """Start delivering webhooks to `url` as runs change (stop() the sender)."""
        return WebhookSender(self, url, secret, interval)

    def deliver_webhook(self, url: str, run: SimRun, secret: str,
                        before: str | None = "") -> list[int]:
        """Deliver now what the platform sends for `run`'s current status; status codes."""
        with self.lock:
            self.tick()
            deliveries = self.webhook_deliveries(run, before, secret)
        return [post_delivery(url, d) for d in deliveries]


def iso(value: datetime | None, *, millis: bool = True) -> str | None:
    if value is None:
        return None
    text = value.astimezone(UTC).isoformat(timespec="milliseconds" if millis else "seconds")
    return text.replace("+00:00", "Z")


# --- webhooks (appended) ---------------------------------------------------------------


class WebhookSender:
    """Delivers a simulator's webhooks to a URL as runs change status, as the platform
    would: a thread ticks the simulator's clock and, for each run whose status moved,
    asks the simulator for the delivery (`Simulator.webhook_delivery`) and POSTs it.
    Every delivery's (time, status code) is kept in `sent`."""

    def __init__(self, sim: Simulator, url: str, secret: str, interval: float = 0.05):
        self.sim, self.url, self.secret, self.interval = sim, url, secret, interval
        self.sent: list[tuple[float, int]] = []
        self._seen: dict[Any, str] = {}
        self._stop = threading.Event()
        with sim.lock:
            sim.tick()
            self._seen = {key: run.status for key, run in sim.runs.items()}
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"sim-{sim.name}-webhooks")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        with self.sim.lock:
            self.sim.tick()
            changed = [(key, run, self._seen.get(key)) for key, run in self.sim.runs.items()
                       if self._seen.get(key) != run.status]
            for key, run, _ in changed:
                self._seen[key] = run.status
            deliveries = [d for key, run, before in changed
                          for d in self.sim.webhook_deliveries(run, before, self.secret)]
        for delivery in deliveries:
            self.sent.append((time.monotonic(), post_delivery(self.url, delivery)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@dataclass
class Delivery:
    """One webhook request as the platform sends it."""

    headers: dict[str, str]
    body: bytes
    query: str = ""  # appended to the URL, e.g. "secret=..."


def post_delivery(url: str, delivery: Delivery, timeout: float = 5.0) -> int:
    """POST one delivery; its status code (0 when nothing answered)."""
    import httpx

    target = f"{url}{'&' if '?' in url else '?'}{delivery.query}" if delivery.query else url
    try:
        response = httpx.post(target, content=delivery.body, timeout=timeout, headers={
            "Content-Type": "application/json", **delivery.headers})
    except httpx.HTTPError:
        return 0
    return response.status_code
