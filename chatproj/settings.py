"""Django settings for chatproj, read from the environment (django-environ).

Every value has a default that works on a developer machine; production overrides
them through environment variables of the same name (see .env.example and
docs/operations.md).
"""

import os
from datetime import timedelta
from pathlib import Path

import environ
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# --- Core -------------------------------------------------------------------------
# Off unless asked: `make run` and `make test` set DEBUG=True; production never does.
DEBUG = env.bool("DEBUG", default=False)
if DEBUG:
    SECRET_KEY = env("SECRET_KEY", default="dev-only-insecure-key-change-me")
elif not env("SECRET_KEY", default=""):
    raise ImproperlyConfigured(
        "SECRET_KEY is not set and DEBUG is off: set SECRET_KEY to a long random "
        "string (python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
        "or DEBUG=True for development."
    )
else:
    SECRET_KEY = env("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Behind a TLS-terminating proxy: trust its X-Forwarded-Proto, send cookies only over
# HTTPS, redirect plain HTTP and ask browsers to stay on HTTPS.
BEHIND_TLS_PROXY = env.bool("BEHIND_TLS_PROXY", default=False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = BEHIND_TLS_PROXY
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=BEHIND_TLS_PROXY)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "chat",
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
]

ROOT_URLCONF = "chatproj.urls"
ASGI_APPLICATION = "chatproj.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chat.web.accounts.account_hints",
            ],
        },
    },
]

LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# --- Database ---------------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
}
# Keep connections between requests and between a consumer's ORM calls (0 opened a
# new connection per call); a broken one is replaced before it is used.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=300)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take the write lock up front, so concurrent writers wait
    # (up to `timeout` seconds) instead of failing with "database is locked". WAL lets
    # readers run beside the writer; synchronous=NORMAL is WAL's durable-enough mode
    # (a power cut may lose the last commits, never corrupt).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file, not memory: tests run the ASGI server and workers in other processes.
    DATABASES["default"]["TEST"] = {
        # One file per test run, so concurrent runs never share (or delete) one.
        "NAME": env(
            "TEST_SQLITE_NAME", default=str(BASE_DIR / f"test_db.{os.getpid()}.sqlite3")
        )
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Django's four validators, applied by the sign-up form and changepassword: at least
# 8 characters, not like the username, not one of 20,000 common passwords, not only
# digits.
AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation."
        "UserAttributeSimilarityValidator"
    },
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# WhiteNoise serves static files in every process (collected in the Docker image;
# straight from the apps when DEBUG is on).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Redis: channel layer and Celery broker ---------------------------------------
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")

# pubsub (default): a group_send is one PUBLISH, and each web process fans it out to
# its own consumers; nothing is dropped for a slow consumer (frames wait in that
# process's memory), and a live frame reaches who is connected, as before.
# list: channels_redis's list-based layer, one Redis list entry per member, which
# silently drops a message once a channel holds `capacity`.
CHANNEL_LAYER_BACKEND = env("CHANNEL_LAYER_BACKEND", default="pubsub")
if CHANNEL_LAYER_BACKEND == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
elif CHANNEL_LAYER_BACKEND == "list":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                "capacity": env.int("CHANNEL_LAYER_CAPACITY", default=20000),
                "expiry": env.int("CHANNEL_LAYER_EXPIRY", default=120),
            },
        }
    }
else:
    raise ImproperlyConfigured(
        "CHANNEL_LAYER_BACKEND must be 'pubsub' or 'list', "
        f"not {CHANNEL_LAYER_BACKEND!r}."
    )

# --- Kafka ------------------------------------------------------------------------
KAFKA_ENABLED = env.bool("KAFKA_ENABLED", default=True)
KAFKA_BOOTSTRAP_SERVERS = env("KAFKA_BOOTSTRAP_SERVERS", default="127.0.0.1:9092")
KAFKA_CLIENT_ID = env("KAFKA_CLIENT_ID", default="chat-agent")
KAFKA_CHAT_TOPIC = env("KAFKA_CHAT_TOPIC", default="chat_messages")
# The chat topic and <topic>.dlq are created with these (never by the broker's
# auto-create): by each producer process before its first send when
# KAFKA_CREATE_TOPICS is on, and by `manage.py kafka_topics`. Production with three
# brokers: replication factor 3, KAFKA_TOPIC_MIN_INSYNC_REPLICAS=2 (with acks=all).
KAFKA_CREATE_TOPICS = env.bool("KAFKA_CREATE_TOPICS", default=True)
KAFKA_TOPIC_PARTITIONS = env.int("KAFKA_TOPIC_PARTITIONS", default=6)
KAFKA_TOPIC_REPLICATION_FACTOR = env.int("KAFKA_TOPIC_REPLICATION_FACTOR", default=1)
KAFKA_TOPIC_MIN_INSYNC_REPLICAS = env.int("KAFKA_TOPIC_MIN_INSYNC_REPLICAS", default=0)
# Upper bound, in seconds, on any single Kafka call: producer creation, one send + ack,
# flush and close. A dead broker never blocks a worker longer than this.
KAFKA_SEND_TIMEOUT = env.float("KAFKA_SEND_TIMEOUT", default=5.0)
# How long the producer itself keeps retrying a batch (a leader election, a broker
# restart) before the publish attempt fails; the attempt waits that long for every
# record's outcome. Retries inside one producer keep their sequence numbers, so the
# broker drops the copies: a failover within this window leaves no duplicate.
KAFKA_DELIVERY_TIMEOUT = env.float(
    "KAFKA_DELIVERY_TIMEOUT", default=3 * KAFKA_SEND_TIMEOUT
)
# Each publish batch is one Kafka transaction, so a batch sent again after a failure
# is never seen twice by a consumer reading with isolation_level="read_committed"
# (the stream's consumers must). Off: idempotence only, and an outage longer than
# KAFKA_DELIVERY_TIMEOUT can leave copies (duplicates by message_id).
KAFKA_TRANSACTIONS = env.bool("KAFKA_TRANSACTIONS", default=True)
# The broker aborts a transaction left open this long (a worker killed mid-batch):
# until then read_committed consumers of its partitions wait. Above the longest
# batch (its records' outcomes, then the commit).
KAFKA_TRANSACTION_TIMEOUT = env.float(
    "KAFKA_TRANSACTION_TIMEOUT", default=KAFKA_DELIVERY_TIMEOUT + 3 * KAFKA_SEND_TIMEOUT
)
KAFKA_RETRY_TRIES = env.int("KAFKA_RETRY_TRIES", default=3)
KAFKA_RETRY_DELAY = env.float("KAFKA_RETRY_DELAY", default=1.0)
KAFKA_RETRY_BACKOFF = env.float("KAFKA_RETRY_BACKOFF", default=2.0)
# Extra KafkaProducer options as JSON, e.g. SASL/TLS or compression:
# KAFKA_PRODUCER_OPTIONS='{"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}'
KAFKA_PRODUCER_OPTIONS = env.json("KAFKA_PRODUCER_OPTIONS", default={})
# Fraction of each countdown added as random jitter (0 = exact countdowns).
KAFKA_RETRY_JITTER = env.float("KAFKA_RETRY_JITTER", default=0.0)

# After this many consecutive retriable failures a worker process stops calling the
# broker for KAFKA_BREAKER_RESET seconds (attempts fail fast and are retried later).
KAFKA_BREAKER_FAILURES = env.int("KAFKA_BREAKER_FAILURES", default=3)
KAFKA_BREAKER_RESET = env.float("KAFKA_BREAKER_RESET", default=5.0)

# --- Publishing: one publisher per conversation, in batches ------------------------
# A publish task sends at most this many of a conversation's messages at once.
CHAT_PUBLISH_BATCH = env.int("CHAT_PUBLISH_BATCH", default=500)
# The per-conversation lock expires after this many seconds, so a publisher that
# crashed holding it blocks its conversation no longer than that: above the longest
# legitimate hold (producer bootstrap and the topic's metadata, each
# KAFKA_SEND_TIMEOUT, then every record's outcome, KAFKA_DELIVERY_TIMEOUT, then the
# commit and, if it went unanswered, reading the records back, each
# KAFKA_SEND_TIMEOUT). A task
# waits at most KAFKA_SEND_TIMEOUT for it, then retries later (Celery's countdown)
# instead of holding a worker process.
CHAT_PUBLISH_LOCK_TIMEOUT = env.float(
    "CHAT_PUBLISH_LOCK_TIMEOUT",
    default=4 * KAFKA_SEND_TIMEOUT + KAFKA_DELIVERY_TIMEOUT + 2,
)

# --- Outbox sweep (the Message table is the outbox) -------------------------------
# A message still pending this long after its last attempt is re-enqueued; a failed
# one waits GRACE × 2^sweeps, at most OUTBOX_BACKOFF_MAX, between re-enqueues.
OUTBOX_GRACE_SECONDS = env.float("OUTBOX_GRACE_SECONDS", default=60.0)
OUTBOX_BACKOFF_MAX = env.float("OUTBOX_BACKOFF_MAX", default=300.0)
OUTBOX_SWEEP_INTERVAL = env.float("OUTBOX_SWEEP_INTERVAL", default=10.0)
OUTBOX_SWEEP_BATCH = env.int("OUTBOX_SWEEP_BATCH", default=1000)
# The sweep enqueues nothing while more tasks than this wait in the Celery queue: they
# are late, not lost.
OUTBOX_SWEEP_MAX_QUEUE = env.int("OUTBOX_SWEEP_MAX_QUEUE", default=1000)

# --- Chat -------------------------------------------------------------------------
CHAT_MAX_MESSAGE_LENGTH = env.int("CHAT_MAX_MESSAGE_LENGTH", default=4000)
CHAT_HISTORY_SIZE = env.int("CHAT_HISTORY_SIZE", default=50)
# Messages one user may send per window, e.g. "30/10seconds" (empty: no limit).
CHAT_RATE_LIMIT = env("CHAT_RATE_LIMIT", default="30/10seconds")
# A client_id (the sender's idempotency key) identifies its message this many seconds;
# a frame resent within it gets the original ack and creates nothing.
CHAT_CLIENT_ID_WINDOW = env.int("CHAT_CLIENT_ID_WINDOW", default=86400)
# An open conversation counts as "online" for this many seconds past its last refresh
# (a connection refreshes every third of it; a crashed process's entries expire).
PRESENCE_TTL = env.float("PRESENCE_TTL", default=60.0)

# --- Live connection: heartbeat and typing (docs/protocol.md#heartbeat) -------------
# The page sends a ping after this many seconds without sending anything, and gives
# the link up (closes it, shows "reconnecting…", resumes on a new socket) when no frame
# at all came back this many seconds after a ping: a frozen link is noticed within
# about CHAT_HEARTBEAT_INTERVAL + CHAT_HEARTBEAT_TIMEOUT seconds.
CHAT_HEARTBEAT_INTERVAL = env.float("CHAT_HEARTBEAT_INTERVAL", default=5.0)
CHAT_HEARTBEAT_TIMEOUT = env.float("CHAT_HEARTBEAT_TIMEOUT", default=8.0)
# The server asks a chat socket silent for a third of this many seconds for a sign of
# life (a ping, which pages answer even when the browser throttles a background tab's
# timers), and closes it (4408) when it sent no frame for all of it; its presence ends
# then (0: never). It must leave room for several heartbeats.
CHAT_IDLE_TIMEOUT = env.float("CHAT_IDLE_TIMEOUT", default=45.0)
# At most one typing notice per user and room per this many seconds reaches the room;
# the page shows one for twice as long unless the user's message comes first.
CHAT_TYPING_INTERVAL = env.float("CHAT_TYPING_INTERVAL", default=3.0)

# --- WebSocket security (docs/security.md) --------------------------------------
# Where CHAT_RATE_LIMIT is counted: an async `limits` storage URI. Empty: the shared
# Redis of REDIS_URL (async+redis://...), so the limit holds across web replicas;
# "async+memory://" counts per process. If the storage does not answer, each process
# counts in memory until it does.
CHAT_RATE_LIMIT_STORAGE = env("CHAT_RATE_LIMIT_STORAGE", default="")
# Frames of any kind (messages, read marks, garbage) one connection may send, counted
# in its process; past it a frame is dropped with `rate_limited` (empty: no limit).
CHAT_FRAME_RATE = env("CHAT_FRAME_RATE", default="20/second")
# A connection refused for rate this many times in a row is closed with 4429 (0: never).
CHAT_FLOOD_CLOSE_AFTER = env.int("CHAT_FLOOD_CLOSE_AFTER", default=50)
# Sockets (chat and notifications) one user may have open at once; one more is closed
# with 4429 (0: no cap). Counted in Redis, entries expire after PRESENCE_TTL.
CHAT_MAX_CONNECTIONS_PER_USER = env.int("CHAT_MAX_CONNECTIONS_PER_USER", default=20)
# Seconds between a socket's checks that its session still exists and its user may
# still sign in (logout, password changes and deactivation close sockets at once
# through signals; this catches sessions flushed or expired otherwise). 0: never.
CHAT_SESSION_CHECK_INTERVAL = env.float("CHAT_SESSION_CHECK_INTERVAL", default=60.0)
# Sockets (chat and notifications) one user may open per window, e.g. "60/minute"
# (empty: no limit); one more is closed with 4429. Counted like CHAT_RATE_LIMIT.
CHAT_CONNECT_RATE = env("CHAT_CONNECT_RATE", default="60/minute")
# Exact origins (scheme://host:port) allowed to open a socket besides the site's own
# (Origin equal to http(s)://<Host>, Host in ALLOWED_HOSTS) and CSRF_TRUSTED_ORIGINS.
WS_ALLOWED_ORIGINS = env.list("WS_ALLOWED_ORIGINS", default=[])
# Seconds a ticket from POST /api/ws-ticket/ stays valid (it opens one socket).
WS_TICKET_TTL = env.int("WS_TICKET_TTL", default=30)

# --- Notifications (NotificationAgent: `manage.py run_agent notifications`) --------
KAFKA_NOTIFICATIONS_GROUP = env(
    "KAFKA_NOTIFICATIONS_GROUP", default="chat-notifications"
)
# Where a group with no committed offset starts: "earliest" (the default) notifies
# about everything still in the topic, so nothing published before the agent's first
# start is missed; "latest" starts with new events only.
KAFKA_NOTIFICATIONS_OFFSET_RESET = env(
    "KAFKA_NOTIFICATIONS_OFFSET_RESET", default="earliest"
)
# Seconds one poll waits for records (also how fast SIGTERM is noticed when idle), the
# most records one poll returns (one DB transaction), and the cap of the backoff while
# the database is unreachable (the batch is retried, never committed unstored).
KAFKA_NOTIFICATIONS_POLL_TIMEOUT = env.float(
    "KAFKA_NOTIFICATIONS_POLL_TIMEOUT", default=1.0
)
KAFKA_NOTIFICATIONS_MAX_RECORDS = env.int(
    "KAFKA_NOTIFICATIONS_MAX_RECORDS", default=500
)
KAFKA_NOTIFICATIONS_RETRY_MAX = env.float("KAFKA_NOTIFICATIONS_RETRY_MAX", default=10.0)
# Extra KafkaConsumer options as a JSON object (SASL/TLS, session_timeout_ms, ...), e.g.
# KAFKA_CONSUMER_OPTIONS='{"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}'
KAFKA_CONSUMER_OPTIONS = env.json("KAFKA_CONSUMER_OPTIONS", default={})
# An agent process (`run_agent`) serves its metrics on this port when set.
AGENT_METRICS_PORT = env.int("AGENT_METRICS_PORT", default=None)
# The latest unread notifications a /ws/notifications/ connection gets on connect.
NOTIFICATIONS_ON_CONNECT = env.int("NOTIFICATIONS_ON_CONNECT", default=20)

# --- Celery -----------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int(
    "CELERY_WORKER_PREFETCH_MULTIPLIER", default=4
)
CELERY_WORKER_SEND_TASK_EVENTS = True
# Celery's Django fix-up closes the database connection before and after every task
# unless told to reuse it: a new connection per task (on Postgres a backend started
# per task; docs/PERFORMANCE.md has the cost). Reuse it, and let
# chat.tasks close it before a task only when Django would (an error, CONN_MAX_AGE).
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A retried task waits in Redis with an ETA; the broker must not redeliver it early.
# An undecodable queue entry is moved to the Redis list poison_list (chatproj/
# kombu_poison.py) instead of stopping the worker.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
    "poison_list": env("CELERY_POISON_LIST", default="celery.poison"),
}
CELERY_BEAT_SCHEDULE = {
    "outbox-sweep": {
        "task": "chat.tasks.sweep_outbox",
        "schedule": OUTBOX_SWEEP_INTERVAL,
        "options": {"expires": OUTBOX_SWEEP_INTERVAL},
    }
}

# --- Logging ----------------------------------------------------------------------
# One configuration for web, worker, beat and agents (Celery's own logging setup is
# skipped in chatproj/celery.py). LOG_FORMAT=json writes one JSON object per line.
# Every record carries message_id: the chat message being handled, or "-".
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOG_FORMAT = env("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(
        f"LOG_FORMAT must be 'plain' or 'json', not {LOG_FORMAT!r}."
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"message_id": {"()": "chat.infra.log_context.MessageIdFilter"}},
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
            " [message_id=%(message_id)s]"
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
            " %(message_id)s",
            "rename_fields": {
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
            },
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["message_id"],
        }
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "chat": {"level": LOG_LEVEL},
        "chatproj": {"level": LOG_LEVEL},
        "celery": {"level": LOG_LEVEL},
        # Celery's two lines per task ("received", "succeeded in"): Flower shows the
        # same; WARNING keeps failures and retries (INFO to see every task).
        "celery.app.trace": {"level": env("CELERY_TASK_LOG_LEVEL", default="WARNING")},
        "celery.worker.strategy": {
            "level": env("CELERY_TASK_LOG_LEVEL", default="WARNING")
        },
        # kafka-python logs every failed connection attempt; the agent logs the outcome.
        "kafka": {"level": env("KAFKA_LOG_LEVEL", default="CRITICAL")},
    },
}

# --- Security: login throttling, operator endpoints, CSP, password reset ------------
# Login throttling (django-axes): LOGIN_FAILURE_LIMIT wrong passwords for one username
# from one address lock that pair out for LOGIN_COOLOFF_MINUTES (HTTP 429, even with
# the right password); a successful login resets the count. Behind a proxy, give
# uvicorn --proxy-headers --forwarded-allow-ips so the address is the client's.
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last, as axes requires
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # refuses locked-out logins first
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"
# Failed logins from one address, whatever the usernames (password spraying), per
# window; past it the login form answers 429 for that address (empty: no limit). A
# success does not reset it. Sign-ups (accounts created) from one address per window;
# past it the sign-up form answers 429. Counted like CHAT_RATE_LIMIT.
LOGIN_FAILURES_PER_ADDRESS = env("LOGIN_FAILURES_PER_ADDRESS", default="20/15minutes")
SIGNUP_RATE_PER_ADDRESS = env("SIGNUP_RATE_PER_ADDRESS", default="10/hour")
AXES_VERBOSE = False  # one WARNING per lockout from axes is enough

# /metrics and /readyz's detail: with METRICS_TOKEN set, only requests carrying
# `Authorization: Bearer <token>` (from any address: scrapers in other containers);
# with it empty, only requests from METRICS_ALLOWED_IPS (this host by default). Others
# get 401/403 on /metrics and only the status (no detail) from /readyz.
METRICS_TOKEN = env("METRICS_TOKEN", default="")
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])

# Content-Security-Policy (django-csp) on every response: scripts, styles and
# connections (WebSockets included) only from this origin, so no inline script or
# inline event handler runs; json_script data blocks are not scripts.
INSTALLED_APPS += ["csp"]
MIDDLEWARE.insert(-1, "csp.middleware.CSPMiddleware")  # AxesMiddleware stays last
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# Mail. EMAIL_URL names a server (smtp://user:pass@host:587, smtp+tls://...,
# smtps://...); empty: no mail. Password reset is served only when mail is really
# delivered (an SMTP server or a custom EMAIL_BACKEND), never when it would go to the
# console, a file, memory or nowhere: otherwise /accounts/password_reset/ is a 404.
EMAIL_URL = env("EMAIL_URL", default="")
_email = environ.Env.email_url_config(EMAIL_URL or "dummymail://")
EMAIL_BACKEND = env("EMAIL_BACKEND", default=_email["EMAIL_BACKEND"])
EMAIL_HOST = _email["EMAIL_HOST"] or "localhost"
EMAIL_PORT = _email["EMAIL_PORT"] or 25
EMAIL_HOST_USER = _email["EMAIL_HOST_USER"] or ""
EMAIL_HOST_PASSWORD = _email["EMAIL_HOST_PASSWORD"] or ""
EMAIL_USE_TLS = bool(_email.get("EMAIL_USE_TLS"))
EMAIL_USE_SSL = bool(_email.get("EMAIL_USE_SSL"))
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="chatproj <noreply@localhost>")
NON_DELIVERING_EMAIL_BACKENDS = {
    f"django.core.mail.backends.{name}.EmailBackend"
    for name in ("console", "filebased", "locmem", "dummy")
}
PASSWORD_RESET_ENABLED = EMAIL_BACKEND not in NON_DELIVERING_EMAIL_BACKENDS

# --- Consistency checks: fail at start-up, not during an outage --------------------
if KAFKA_DELIVERY_TIMEOUT < KAFKA_SEND_TIMEOUT:
    raise ImproperlyConfigured(
        f"KAFKA_DELIVERY_TIMEOUT ({KAFKA_DELIVERY_TIMEOUT:g} s) must be at least "
        f"KAFKA_SEND_TIMEOUT ({KAFKA_SEND_TIMEOUT:g} s): one request must fit in it."
    )
if KAFKA_TOPIC_PARTITIONS < 1 or KAFKA_TOPIC_REPLICATION_FACTOR < 1:
    raise ImproperlyConfigured(
        "KAFKA_TOPIC_PARTITIONS and KAFKA_TOPIC_REPLICATION_FACTOR must be >= 1."
    )
if KAFKA_TOPIC_MIN_INSYNC_REPLICAS > KAFKA_TOPIC_REPLICATION_FACTOR:
    raise ImproperlyConfigured(
        "KAFKA_TOPIC_MIN_INSYNC_REPLICAS cannot exceed KAFKA_TOPIC_REPLICATION_FACTOR: "
        "no write could ever be acknowledged."
    )
if min(CHAT_HEARTBEAT_INTERVAL, CHAT_HEARTBEAT_TIMEOUT, CHAT_TYPING_INTERVAL) <= 0:
    raise ImproperlyConfigured(
        "CHAT_HEARTBEAT_INTERVAL, CHAT_HEARTBEAT_TIMEOUT and CHAT_TYPING_INTERVAL must "
        "be positive numbers of seconds."
    )
if CHAT_IDLE_TIMEOUT < 0 or 0 < CHAT_IDLE_TIMEOUT < 3 * CHAT_HEARTBEAT_INTERVAL:
    raise ImproperlyConfigured(
        f"CHAT_IDLE_TIMEOUT ({CHAT_IDLE_TIMEOUT:g} s) must be 0 (never) or at least "
        f"three heartbeats (3 x CHAT_HEARTBEAT_INTERVAL = "
        f"{3 * CHAT_HEARTBEAT_INTERVAL:g} s), or healthy pages are closed."
    )
if KAFKA_RETRY_TRIES < 1:
    raise ImproperlyConfigured("KAFKA_RETRY_TRIES counts attempts: it must be >= 1.")
_visibility = CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
_longest_countdown = KAFKA_RETRY_DELAY * KAFKA_RETRY_BACKOFF ** max(
    KAFKA_RETRY_TRIES - 2, 0
)
if _visibility <= _longest_countdown:
    raise ImproperlyConfigured(
        f"CELERY_VISIBILITY_TIMEOUT ({_visibility} s) must exceed the longest retry "
        f"countdown ({_longest_countdown:g} s), or Redis redelivers scheduled retries "
        "early: raise it or shorten KAFKA_RETRY_*."
    )
