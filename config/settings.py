"""Refinery settings. Everything that differs between machines comes from the environment."""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from config.env import database_from_url, env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("REFINERY_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        # A key in the repository is a key everybody has: sessions, password reset links and
        # signed values could be forged. Never fall back to one outside development.
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it to a long random value (for example the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`), or set DEBUG=1 for "
            "local development."
        )
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG"
LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
# Unset, only loopback names are served: a deployment must say which names it answers to.
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", LOOPBACK_HOSTS)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "csp",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "annotation",
    "feedback_loop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files from the app server itself, with or without DEBUG (hashed names are cached
    # for ever); no separate web server is needed in front of gunicorn.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(env_str("DATABASE_URL", "sqlite:///var/refinery.sqlite3"), base_dir=BASE_DIR)
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    # First: refuses locked-out (username, address) pairs before any password is checked.
    "config.auth.LoginAttemptsBackend",
    "django.contrib.auth.backends.ModelBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
MEDIA_ROOT = VAR_DIR / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Without DEBUG, pages link to the hashed, compressed copies that `collectstatic` writes
    # (and WhiteNoise serves with far-future cache headers); until collectstatic has run they
    # link to the plain names, which WhiteNoise serves from the source folders.
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "config.storage.StaticStorage"
    },
}
# Serve from the source folders too, so a checkout that never ran collectstatic still has
# its scripts and styles (files are listed once, at start-up).
WHITENOISE_USE_FINDERS = True

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "annotation.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "annotation.api.schema.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "annotation.api.pagination.LimitOffsetPagination",
    "DEFAULT_PARSER_CLASSES": [
        "annotation.api.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # The browsable API only while developing: its forms are not what a deployment should serve.
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        *(["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    ],
    "PAGE_SIZE": 100,
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "annotation.api.negotiation.ContentNegotiation",
    "EXCEPTION_HANDLER": "annotation.api.errors.exception_handler",
    # Generous: a fast rater makes a few requests a minute, the queue bench a few a second per
    # rater. The limits stop scripts run away with a token, not people.
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("API_THROTTLE_ANON", "120/min"),
        "user": env_str("API_THROTTLE_USER", "6000/min"),
        # Per rater, on next-task alone (annotation.api.throttles).
        "next_task": env_str("API_THROTTLE_NEXT_TASK", "10/s"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Refinery API",
    "DESCRIPTION": "Rating tasks, judgments and exports for learning from human language feedback.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

# Celery: Redis or RabbitMQ in deployments; the embedded default is the filesystem broker,
# which needs no service at all.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(VAR_DIR / "broker"),
        "data_folder_out": str(VAR_DIR / "broker"),
        "processed_folder": str(VAR_DIR / "broker-processed"),
        # Its exchange tables; by default a `control` folder in the current directory.
        "control_folder": str(VAR_DIR / "broker-control"),
        "store_processed": False,
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    # Redis hands a message whose worker died (unacknowledged) to another worker after this long;
    # the loop's sweeper (below) does not wait for it.
    else {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

# The loop (feedback_loop.tasks). Steps that load a model (refine, select, evaluate) and those that
# train or generate run on REFINERY_MODEL_QUEUE; a worker there needs the accelerator. A step's claim
# is stale (its worker is gone) when its heartbeat is LOOP_CLAIM_STALE_SECONDS old. Every
# LOOP_SWEEP_SECONDS, `celery beat` sends the sweeper, which re-sends the step of any round left
# LOOP_STALL_SECONDS with no live claim (its message was lost: a broker restarted empty, a worker
# died), and the auto-start, which starts a round for each project with enough new accepted feedback.
REFINERY_MODEL_QUEUE = env_str("REFINERY_MODEL_QUEUE", "gpu")
# Work that may wait and must not slow the pages down (the curator pages' statistics of a big
# project, annotation.tasks.refresh_figures) goes to REFINERY_BACKGROUND_QUEUE. A worker consuming
# that queue alone lowers its own CPU priority to the nice value REFINERY_BACKGROUND_NICE when it
# starts (config/celery.py), so that on a machine shared with the web processes the raters' requests
# come first; a worker that also consumes other queues keeps its priority.
REFINERY_BACKGROUND_QUEUE = env_str("REFINERY_BACKGROUND_QUEUE", "background")
REFINERY_BACKGROUND_NICE = env_int("REFINERY_BACKGROUND_NICE", 10)
# A niced process (an export's child, a background worker) gives its PostgreSQL backend its own nice
# value where the database runs on this machine and it may (config/priority.py): otherwise the
# backend, a process of its own, would take as much CPU as a rater's. 0 turns this off, as a
# connection pooler on the database's machine needs (it hands backends on to other clients).
BACKGROUND_NICE_DATABASE = env_bool("BACKGROUND_NICE_DATABASE", True)
# Niced processes (and, with BACKGROUND_NICE_DATABASE, their backends) also move into this cgroup,
# made idle, below their own CPU cgroup, where the machine lets them (config/priority.py): on a busy
# core a waking rater's process then never waits for them. "" keeps them where they are.
BACKGROUND_CGROUP = env_str("BACKGROUND_CGROUP", "refinery-background")
# Parallel workers a session's statement may use (PostgreSQL's max_parallel_workers_per_gather;
# unset: the server's own). The web processes set 0 (config/gunicorn.conf.py): a request's big scan
# (a curator page counting a million judgments) would otherwise take every core at once, parallel
# workers being the postmaster's processes at the raters' priority, while the raters' statements
# are index look-ups that never run in parallel. Niced processes' sessions always run without them.
DATABASE_PARALLEL_WORKERS = env_int("DATABASE_PARALLEL_WORKERS", None)
# The statements run on every task are prepared on PostgreSQL (config/postgresql/base.py); 0 turns
# that off behind a connection pooler that does not carry prepared statements between clients.
DATABASE_PREPARED_STATEMENTS = env_bool("DATABASE_PREPARED_STATEMENTS", True)
LOOP_CLAIM_STALE_SECONDS = env_float("LOOP_CLAIM_STALE_SECONDS", 300)
# While a step runs, a thread of its worker touches the claim's heartbeat every LOOP_HEARTBEAT_SECONDS
# (a third of the stale time at most), so that a long model call does not look like a dead worker.
LOOP_HEARTBEAT_SECONDS = env_float("LOOP_HEARTBEAT_SECONDS", 30)
LOOP_STALL_SECONDS = env_float("LOOP_STALL_SECONDS", 600)
LOOP_SWEEP_SECONDS = env_float("LOOP_SWEEP_SECONDS", 60)
# Seconds each heartbeat of a step waits: tests slow the steps down to kill a worker in the middle.
LOOP_TEST_STEP_DELAY = env_float("LOOP_TEST_STEP_DELAY", 0)
# A periodic message that waited ten periods for a worker is dropped: they do not pile up while
# the workers are down.
CELERY_BEAT_SCHEDULE = {
    name: {"task": task, "schedule": LOOP_SWEEP_SECONDS, "options": {"expires": 10 * LOOP_SWEEP_SECONDS}}
    for name, task in (
        ("loop-sweep-rounds", "feedback_loop.sweep_rounds"),
        ("loop-auto-start-rounds", "feedback_loop.auto_start_rounds"),
    )
}
# Each round's win rate over the previous model, from the raters' comparisons of their outputs.
LOOP_WIN_RATE_SECONDS = env_float("LOOP_WIN_RATE_SECONDS", 300.0)
CELERY_BEAT_SCHEDULE["loop-win-rates"] = {
    "task": "feedback_loop.update_win_rates",
    "schedule": LOOP_WIN_RATE_SECONDS,
    "options": {"expires": LOOP_WIN_RATE_SECONDS},
}

# Webhooks (annotation.webhooks): attempts per delivery, the backoff between them (base × 2^n,
# capped), the HTTP timeout, and whether private and loopback addresses may receive them
# (development and tests only: in production a webhook URL must not reach the internal network).
REFINERY_WEBHOOKS_MAX_ATTEMPTS = env_int("REFINERY_WEBHOOKS_MAX_ATTEMPTS", 10)
REFINERY_WEBHOOKS_BACKOFF_SECONDS = env_float("REFINERY_WEBHOOKS_BACKOFF_SECONDS", 1.0)
REFINERY_WEBHOOKS_BACKOFF_MAX_SECONDS = env_float("REFINERY_WEBHOOKS_BACKOFF_MAX_SECONDS", 600.0)
REFINERY_WEBHOOKS_TIMEOUT_SECONDS = env_float("REFINERY_WEBHOOKS_TIMEOUT_SECONDS", 10.0)
REFINERY_WEBHOOKS_ALLOW_PRIVATE = env_bool("REFINERY_WEBHOOKS_ALLOW_PRIVATE", DEBUG)

# Where trained adapters, exports and the locally built demo model live.
REFINERY_ARTIFACTS_DIR = Path(env_str("REFINERY_ARTIFACTS_DIR", str(VAR_DIR / "artifacts")))
# Shared storage for artifacts (fsspec URL: s3://…, gs://…, file://…); empty: the local folder only.
REFINERY_ARTIFACTS_URL = env_str("REFINERY_ARTIFACTS_URL", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "WARNING")},
}

# Throttle counters (and nothing else) live in the default cache: per process unless CACHE_URL
# names a shared Redis, e.g. redis://127.0.0.1:6379/1.
CACHE_URL = env_str("CACHE_URL", "")
# The curator pages' statistics (annotation.quality), keyed by each project's statistics version:
# per process unless STATS_CACHE_URL names a shared Redis. Either way a review or other curator
# change moves the version on at once, raters' judgments within STATS_MAX_AGE_SECONDS.
STATS_CACHE_URL = env_str("STATS_CACHE_URL", "")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
        if CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    ),
    "stats": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": STATS_CACHE_URL}
        if STATS_CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "stats"}
    ),
}
# How long cached statistics are kept (seconds); a new version makes them unread before that.
STATS_CACHE_SECONDS = env_int("STATS_CACHE_SECONDS", 24 * 3600)
# Cached statistics younger than this (seconds) are still shown after raters' new judgments, with
# their time and how many judgments came since; a curator's own change is shown at once.
STATS_MAX_AGE_SECONDS = env_int("STATS_MAX_AGE_SECONDS", 30)
# Figures of a project with more than STATS_INLINE_MAX_JUDGMENTS judgments (a million take seconds
# of CPU) are computed by a worker on REFINERY_BACKGROUND_QUEUE, not in the page view, which would
# hold up the raters' requests in its process: the page shows the last figures meanwhile, or says
# they are being computed, and reloads itself until there are some. Only with a shared
# STATS_CACHE_URL: a worker cannot reach a web process's own cache, so without one every project's
# figures are computed in the page. A recompute sent STATS_REFRESH_SECONDS ago is sent again by the
# next page view that needs it (its worker died, its message was lost).
STATS_INLINE_MAX_JUDGMENTS = env_int("STATS_INLINE_MAX_JUDGMENTS", 20_000)
STATS_REFRESH_SECONDS = env_int("STATS_REFRESH_SECONDS", 600)
# Counting a big project's judgments (the judged version) is tens of milliseconds of the database's
# CPU at the raters' priority: where a worker computes a project's figures, a full count is shared
# through the statistics cache for STATS_JUDGED_COUNT_SECONDS (0: every view counts in full), and
# page views meanwhile count only the judgments added since (annotation.quality._page_versions).
STATS_JUDGED_COUNT_SECONDS = env_int("STATS_JUDGED_COUNT_SECONDS", 60)
# The background worker keeps the answer tables of the last STATS_TABLES_KEPT projects it computed
# in memory (about 41 bytes per judgment and 8 per variable) and reads only the judgments added since,
# until the project's curated version moves on or the table is STATS_TABLE_MAX_AGE_SECONDS old
# (annotation.quality.kept_answer_table); 0 reads every table afresh.
STATS_TABLES_KEPT = env_int("STATS_TABLES_KEPT", 4)
STATS_TABLE_MAX_AGE_SECONDS = env_int("STATS_TABLE_MAX_AGE_SECONDS", 3600)

# Export downloads are made in a child process (annotation.export_process) and streamed through the
# web process: an export of a million judgments is some 20-30 CPU seconds, which in the web process
# would hold the GIL that the raters' request threads wait for. EXPORT_NICE is added to the child's
# niceness (0: the web process's own priority), so the raters' processes come first for the CPU.
# EXPORT_IN_PROCESS=1 makes exports in the web process, as a single-process setup may prefer.
EXPORT_NICE = env_int("EXPORT_NICE", 10)
EXPORT_IN_PROCESS = env_bool("EXPORT_IN_PROCESS", False)

# Login throttling (django-axes): after AXES_FAILURE_LIMIT wrong passwords for one username
# from one address, that pair is locked out for AXES_COOLOFF_MINUTES, on the site's login and
# the admin's alike; other users and other addresses are unaffected.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 10)
# In hours, as a float; at least a minute (0 would mean locked until an admin unlocks it).
AXES_COOLOFF_TIME = max(1, env_int("AXES_COOLOFF_MINUTES", 15)) / 60
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "config.auth.lockout_response"

# Content Security Policy: scripts and styles only from this site, no inline scripts, no
# framing. (The API docs page adds the CDN its Swagger UI comes from, in config/urls.py.)
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# HTTPS. A deployment that answers to a real host name is HTTPS-only by default (redirect,
# HSTS, secure cookies); one that only answers on loopback (the demo, the tests, the bench)
# stays on plain http. Each part can be set from the environment; behind a TLS-terminating
# proxy set SECURE_PROXY_SSL_HEADER to the header it sets, e.g. X-Forwarded-Proto.
HTTPS_ONLY = env_bool("HTTPS_ONLY", not DEBUG and bool(set(ALLOWED_HOSTS) - set(LOOPBACK_HOSTS)))
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", HTTPS_ONLY)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if HTTPS_ONLY else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", HTTPS_ONLY)
_proxy_header = env_str("SECURE_PROXY_SSL_HEADER", "")
if _proxy_header:
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https")
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 50 * 1024 * 1024)
# Uploads past FILE_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) are spooled to FILE_UPLOAD_TEMP_DIR; a full
# disk answers 507 (annotation.api.errors) and the partial file is removed at once.
FILE_UPLOAD_HANDLERS = [
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "config.uploads.TemporaryFileUploadHandler",
]
