"""Runboard settings, all read from the environment.

With nothing set, Runboard runs on an embedded default that needs no server:
SQLite for data and Celery's filesystem transport as broker, both under ./var/.
Production sets DATABASE_URL (PostgreSQL) and CELERY_BROKER_URL (Redis).
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("RUNBOARD_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()
if (BASE_DIR / ".env").exists():
    env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)
# No default outside DEBUG: a production deployment must choose its own key.
SECRET_KEY = env.str("SECRET_KEY", default="dev-only-insecure-key" if DEBUG else environ.Env.NOTSET)
# Former keys, comma-separated, newest first: still decrypt tokens and sessions signed
# with them while `manage.py rotate_tokens` re-encrypts every token under SECRET_KEY.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
# Provider tokens are encrypted with keys derived from SECRET_KEY and this salt
# (django-fernet-encrypted-fields); rotating either makes stored tokens unreadable.
SALT_KEY = env.list("FIELD_ENCRYPTION_SALT", default=["runboard-provider-tokens"])
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_filters",
    "mozilla_django_oidc",
    "ninja",  # serves the API docs page's scripts from here, not a CDN
    "axes",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "dashboard.middleware.ApiJsonErrors",
    "dashboard.middleware.HtmxLoginRedirect",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it answers a locked-out login attempt.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
WSGI_APPLICATION = "dashboard.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "dashboard.attention.context",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'runboard.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Web, worker and beat share one file: wait for locks instead of failing, take
    # the write lock up front, and let readers run beside the writer (WAL).
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "run-list"
LOGOUT_REDIRECT_URL = "login"

# Single sign-on with OpenID Connect (mozilla-django-oidc), on when a client id is set.
# The endpoints are the provider's discovery document's (`manage.py oidc_endpoints ISSUER`
# prints them as lines for the environment).
AUTHENTICATION_BACKENDS = [
    # First (django-axes): refuses a locked-out username/address before a password is checked.
    "axes.backends.AxesStandaloneBackend",
    "dashboard.auth.LocalBackend",
    "dashboard.auth.OIDCBackend",
]
OIDC_RP_CLIENT_ID = env.str("OIDC_RP_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET = env.str("OIDC_RP_CLIENT_SECRET", default="")
OIDC_OP_AUTHORIZATION_ENDPOINT = env.str("OIDC_OP_AUTHORIZATION_ENDPOINT", default="")
OIDC_OP_TOKEN_ENDPOINT = env.str("OIDC_OP_TOKEN_ENDPOINT", default="")
OIDC_OP_USER_ENDPOINT = env.str("OIDC_OP_USER_ENDPOINT", default="")
OIDC_OP_JWKS_ENDPOINT = env.str("OIDC_OP_JWKS_ENDPOINT", default="")
OIDC_RP_SIGN_ALGO = env.str("OIDC_RP_SIGN_ALGO", default="RS256")
OIDC_RP_SCOPES = env.str("OIDC_RP_SCOPES", default="openid email profile groups")
OIDC_USE_PKCE = True
OIDC_TIMEOUT = env.float("OIDC_TIMEOUT", default=10.0)
LOGIN_REDIRECT_URL_FAILURE = "/accounts/login/?sso=failed"
# The claim listing the user's groups, and which of its groups make a release manager.
RUNBOARD_OIDC_GROUPS_CLAIM = env.str("RUNBOARD_OIDC_GROUPS_CLAIM", default="groups")
RUNBOARD_OIDC_MANAGER_GROUPS = env.list("RUNBOARD_OIDC_MANAGER_GROUPS",
                                        default=["release-managers"])
# Refuse an e-mail the provider does not say it verified (`email_verified`). Turn off only
# for a provider that never sends the claim and owns every address it asserts.
RUNBOARD_OIDC_REQUIRE_VERIFIED_EMAIL = env.bool("RUNBOARD_OIDC_REQUIRE_VERIFIED_EMAIL",
                                                default=True)
RUNBOARD_OIDC_LABEL = env.str("RUNBOARD_OIDC_LABEL", default="single sign-on")
# Local passwords: "on" for everyone, "admins" (superusers only) or "off".
RUNBOARD_LOCAL_LOGIN = env.str("RUNBOARD_LOCAL_LOGIN", default="on")

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# HTTPS: production is served over TLS (as the secure cookies above assume). Behind a
# proxy that terminates TLS, set SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO,https
# (only if the proxy always sets or strips that header), or the redirect loops.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=SESSION_COOKIE_SECURE)
# Probes call these on the server's own address, over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
if env.str("SECURE_PROXY_SSL_HEADER", default=""):
    SECURE_PROXY_SSL_HEADER = tuple(env.list("SECURE_PROXY_SSL_HEADER"))
# HSTS is remembered by browsers for this long: opt in once HTTPS works (e.g. 31536000).
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)

# Content-Security-Policy (django-csp): pages run only Runboard's own scripts and
# styles (static/), no inline code, no eval; nothing may frame them.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

# Login throttling (django-axes): after AXES_FAILURE_LIMIT failed logins for a
# username from one address, that pair is locked out for AXES_COOLOFF_MINUTES.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_MINUTES", default=15.0) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# Behind N reverse proxies the client's address is taken from X-Forwarded-For; with
# 0 (the default) only the socket's address counts, which a client cannot forge.
AXES_IPWARE_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0) or None
if AXES_IPWARE_PROXY_COUNT:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR")

# A cache shared by the web processes (the run list is rendered once per data change):
# per-process memory by default, e.g. redis://redis:6379/1 in production.
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}
# How long a rendered run list may be served while no run or connection changes.
RUNBOARD_FRAGMENT_CACHE_SECONDS = env.int("RUNBOARD_FRAGMENT_CACHE_SECONDS", default=30)
# A sync that found nothing new tells live pages so at most this often (seconds).
RUNBOARD_LIVE_HEARTBEAT = env.float("RUNBOARD_LIVE_HEARTBEAT", default=30.0)

# How long the data version live pages poll may be served from the cache (seconds). With a
# shared cache (CACHE_URL=redis://...) writers invalidate it at once; with the default
# per-process cache this bounds how late a page sees a worker's write. Open pages poll
# every 0.5 s, so a change shows within 0.25 + 0.5 s plus one render.
RUNBOARD_DATA_VERSION_SECONDS = env.float("RUNBOARD_DATA_VERSION_SECONDS", default=0.25)

# Celery: a broker that needs no server by default, Redis in production.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = VAR_DIR / "broker"
    (_broker_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        # Else kombu keeps its exchange table in ./control, wherever the worker started.
        "control_folder": str(_broker_dir / "control"),
    }
else:
    # A task not acknowledged within this window is handed to another worker.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300}
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_QUEUE", default="runboard")
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# How often beat asks every connection to sync (seconds).
RUNBOARD_SYNC_INTERVAL = env.float("RUNBOARD_SYNC_INTERVAL", default=10.0)
# Timeout for each provider HTTP request (seconds).
RUNBOARD_PROVIDER_TIMEOUT = env.float("RUNBOARD_PROVIDER_TIMEOUT", default=10.0)
# A pass reads every environment/stage in detail at least this often, even where the
# provider's list-level state says nothing changed (providers/*: change_state).
RUNBOARD_FULL_READ_EVERY = env.float("RUNBOARD_FULL_READ_EVERY", default=3600.0)
# A sync holds its connection's lease this long past its last page; a worker that dies
# mid-sync blocks the connection no longer than this (seconds).
RUNBOARD_SYNC_LEASE = env.float("RUNBOARD_SYNC_LEASE", default=60.0)
# First retry delay of a sync that failed on a provider outage; doubles per retry (seconds).
RUNBOARD_RETRY_BACKOFF = env.float("RUNBOARD_RETRY_BACKOFF", default=5.0)
# Stop a pass (and wait for the reset) when the provider says this few requests remain.
RUNBOARD_RATE_LIMIT_RESERVE = env.int("RUNBOARD_RATE_LIMIT_RESERVE", default=2)
# A connection with no successful sync for this long is shown as stale (seconds).
RUNBOARD_STALE_AFTER = env.float("RUNBOARD_STALE_AFTER", default=120.0)
# Separation of duties: whoever triggered a run (where the platform says who did) may
# not approve it. Matched against the user's username, full name and e-mail.
RUNBOARD_SEPARATION_OF_DUTIES = env.bool("RUNBOARD_SEPARATION_OF_DUTIES", default=False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # axes: failed logins and lockouts (WARNING) stay, every successful login does not.
    "loggers": {"httpx": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}

# --- notifications, link previews, Slack (dashboard/notifications.py, previews.py, slack.py)
# Where users and providers reach Runboard: notifications' run links and the webhook
# URL `manage.py webhook_secret` prints start with it.
RUNBOARD_BASE_URL = env.str("RUNBOARD_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")
# A run that finished longer ago than this is not announced (a first sync's history).
RUNBOARD_NOTIFY_MAX_AGE = env.float("RUNBOARD_NOTIFY_MAX_AGE", default=3600.0)
# First retry delay of a notification that could not be delivered; doubles per retry (s).
RUNBOARD_NOTIFY_BACKOFF = env.float("RUNBOARD_NOTIFY_BACKOFF", default=10.0)
# Let chat unfurlers read a run link's title, status, environment and version (only
# those) without logging in. Off: a run link shows the login page to anyone anonymous.
RUNBOARD_PUBLIC_PREVIEWS = env.bool("RUNBOARD_PUBLIC_PREVIEWS", default=False)
# The Slack app (README): its signing secret, its bot token, and the Web API's root.
RUNBOARD_SLACK_SIGNING_SECRET = env.str("RUNBOARD_SLACK_SIGNING_SECRET", default="")
RUNBOARD_SLACK_BOT_TOKEN = env.str("RUNBOARD_SLACK_BOT_TOKEN", default="")
RUNBOARD_SLACK_API_URL = env.str("RUNBOARD_SLACK_API_URL", default="https://slack.com/api/")
# Answers go only to response_urls under this prefix (the payload names the URL).
RUNBOARD_SLACK_RESPONSE_URL_PREFIX = env.str("RUNBOARD_SLACK_RESPONSE_URL_PREFIX",
                                             default="https://hooks.slack.com/")

# --- webhooks and the polling scheduler ----------------------------------------------
# A webhook body larger than this is refused with 413 (bytes).
RUNBOARD_WEBHOOK_MAX_BYTES = env.int("RUNBOARD_WEBHOOK_MAX_BYTES", default=256 * 1024)
# A delivery seen (accepted) this recently is a duplicate or a replay: answered 200,
# no work done (seconds).
RUNBOARD_WEBHOOK_REPLAY_WINDOW = env.float("RUNBOARD_WEBHOOK_REPLAY_WINDOW", default=86400.0)
# The webhook delivery log, sent notifications and handled Slack interactions are kept
# this long (days), then deleted hourly (dashboard/retention.py). The audit is kept.
RUNBOARD_LOG_RETENTION_DAYS = env.float("RUNBOARD_LOG_RETENTION_DAYS", default=30.0)
# Refused deliveries are logged always, and written to the delivery log at most this
# often per connection and minute (a flood of forgeries must not flood the database).
RUNBOARD_WEBHOOK_REJECTED_LOG_PER_MINUTE = env.int(
    "RUNBOARD_WEBHOOK_REJECTED_LOG_PER_MINUTE", default=30)
# Share of each provider's documented request budget the sync may spend (0..1).
RUNBOARD_BUDGET_SHARE = env.float("RUNBOARD_BUDGET_SHARE", default=0.5)
# Fastest poll of a connection with live runs or a watched page (seconds).
RUNBOARD_POLL_MIN = env.float("RUNBOARD_POLL_MIN", default=2.0)
# Poll of a connection with nothing live; doubles per quiet pass up to RUNBOARD_POLL_MAX.
RUNBOARD_POLL_IDLE = env.float("RUNBOARD_POLL_IDLE", default=15.0)
RUNBOARD_POLL_MAX = env.float("RUNBOARD_POLL_MAX", default=600.0)
# With healthy webhooks and nothing live, reconcile this often (seconds).
RUNBOARD_WEBHOOK_RECONCILE = env.float("RUNBOARD_WEBHOOK_RECONCILE", default=300.0)
# With healthy webhooks, live runs (and watched pages) are polled this often: their changes
# are announced; the poll catches a run starting to wait for approval, which is not.
RUNBOARD_WEBHOOK_LIVE_POLL = env.float("RUNBOARD_WEBHOOK_LIVE_POLL", default=30.0)
# With webhooks on, the part of Runboard's share that passes may spend (waiting runs'
# included); webhook reads have the rest, on a clock of their own that the passes' debt
# never holds back (and may borrow ahead of the passes' clock beyond it).
RUNBOARD_WEBHOOK_PASS_SHARE = env.float("RUNBOARD_WEBHOOK_PASS_SHARE", default=0.5)
# A connection's first pass (a full read) may spend up to this part of the provider's
# window beside the share, once, rather than hold the next passes back until repaid.
RUNBOARD_FIRST_PASS_ALLOWANCE = env.float("RUNBOARD_FIRST_PASS_ALLOWANCE", default=0.25)
# Webhook reads may go this many at once on their own clock, and borrow one pass's cost
# plus this many ahead of the passes' clock.
RUNBOARD_WEBHOOK_BURST = env.int("RUNBOARD_WEBHOOK_BURST", default=5)
# Deliveries for one connection within this many seconds are read together, once per run.
RUNBOARD_WEBHOOK_COALESCE = env.float("RUNBOARD_WEBHOOK_COALESCE", default=0.1)
# The Celery queue webhook reads go to ("": the default queue). Give it a worker of its
# own (`celery -A dashboard worker -Q <it>`) so a read never waits behind long passes.
RUNBOARD_WEBHOOK_QUEUE = env.str("RUNBOARD_WEBHOOK_QUEUE", default="")
# A page open on a connection's runs keeps it "watched" this long after its last poll.
RUNBOARD_WATCH_SECONDS = env.float("RUNBOARD_WATCH_SECONDS", default=30.0)
# How often beat asks the scheduler which connections are due (seconds).
RUNBOARD_SCHEDULER_TICK = env.float("RUNBOARD_SCHEDULER_TICK", default=1.0)

# --- /metrics for Prometheus (dashboard/metrics.py): off (404) unless one of these is set.
# A scraper sends `Authorization: Bearer <token>`. Networks (comma-separated CIDRs) are
# matched against the socket's address, REMOTE_ADDR: behind a reverse proxy that is the
# proxy's, so there use the token. With both set, a scrape needs both.
RUNBOARD_METRICS_TOKEN = env.str("RUNBOARD_METRICS_TOKEN", default="")
RUNBOARD_METRICS_NETWORKS = env.list("RUNBOARD_METRICS_NETWORKS", default=[])
