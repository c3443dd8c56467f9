"""The one settings file.

Every deployment difference is an environment variable read by a strict helper below.
With neither DATABASE_URL nor REDIS_URL set, the product runs embedded: SQLite, the
in-memory channel layer and eager Celery, with its state under DATA_DIR.
"""

import os
import secrets
from collections.abc import Callable
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() == "true":
        return True
    if raw.lower() == "false":
        return False
    raise ImproperlyConfigured(f"{name} must be 'true' or 'false', not {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_secret(name: str) -> str:
    """A secret from NAME, or from the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    value = os.environ.get(name, "")
    path = os.environ.get(f"{name}_FILE", "")
    if value and path:
        raise ImproperlyConfigured(f"set {name} or {name}_FILE, not both")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {path}: {exc}") from None
    return value


def _secret_from_data_dir(filename: str, make: Callable[[], str]) -> str:
    """Embedded default: a secret created on first run, kept in a 0600 file in DATA_DIR."""
    path = DATA_DIR / filename
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var"))).resolve()
DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_secret("SECRET_KEY") or _secret_from_data_dir(
    "secret_key", lambda: secrets.token_urlsafe(50)
)

# Credentials for upstream MCP servers are encrypted with this key (Fernet). Several
# comma-separated keys allow rotation: the first encrypts, all of them decrypt.
GATEWAY_ENCRYPTION_KEYS = [
    key.strip() for key in env_secret("GATEWAY_ENCRYPTION_KEY").split(",") if key.strip()
]
if not GATEWAY_ENCRYPTION_KEYS:

    def _new_fernet_key() -> str:
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode()

    GATEWAY_ENCRYPTION_KEYS = [_secret_from_data_dir("encryption.key", _new_fernet_key)]

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
# The public base URL of this gateway, used in protected resource metadata. Without it
# the URL is derived from the request's Host header.
PUBLIC_URL = env_str("PUBLIC_URL").rstrip("/")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "gateway",
    "masking",
    "console",
    "approvals",
    "audit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mcpgw.urls"
ASGI_APPLICATION = "mcpgw.asgi.application"
WSGI_APPLICATION = None

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

DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600),
            conn_health_checks=True,
        )
    }
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "gateway.sqlite3",
            "OPTIONS": {
                # WAL lets the console read while the gateway writes; IMMEDIATE avoids
                # "database is locked" upgrades from read to write transactions.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": env_str("CHANNEL_PREFIX", "mcpgw")},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = False
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(DATA_DIR / "static")))

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}

# The MCP data path.
GATEWAY = {
    # Largest request body an agent may send, in bytes.
    "MAX_BODY_BYTES": env_int("GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024),
    # Seconds to wait for an upstream to connect, and for its answer to a request.
    "UPSTREAM_CONNECT_TIMEOUT": env_float("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", 5.0, minimum=0.1),
    "UPSTREAM_TIMEOUT": env_float("GATEWAY_UPSTREAM_TIMEOUT", 60.0, minimum=0.1),
    # Browser origins allowed to call /mcp/ (agents without an Origin header always may).
    "ALLOWED_ORIGINS": env_list("GATEWAY_ALLOWED_ORIGINS", []),
    # Idle legacy-era downstream sessions expire after this many seconds.
    "SESSION_IDLE_TIMEOUT": env_int("GATEWAY_SESSION_IDLE_TIMEOUT", 24 * 3600, minimum=60),
    # Seconds to keep an upstream's detected protocol era before probing again.
    "ERA_CACHE_SECONDS": env_int("GATEWAY_ERA_CACHE_SECONDS", 3600, minimum=0),
}

# The audit trail.
AUDIT = {
    # Sign a checkpoint every N records, and every M minutes if the chain grew.
    "CHECKPOINT_EVERY": env_int("AUDIT_CHECKPOINT_EVERY", 1000, minimum=0),
    "CHECKPOINT_MINUTES": env_int("AUDIT_CHECKPOINT_MINUTES", 5, minimum=1),
    # Outside the database: a directory on durable storage shared by all processes.
    "CHECKPOINT_DIR": env_str("AUDIT_CHECKPOINT_DIR", str(DATA_DIR / "audit-checkpoints")),
    "SIGNING_KEY_FILE": env_str("AUDIT_SIGNING_KEY_FILE", str(DATA_DIR / "audit-signing.pem")),
    # Embedded default: create the signing key on first use. Production sets false and
    # provides the key file.
    "CREATE_SIGNING_KEY": env_bool("AUDIT_CREATE_SIGNING_KEY", True),
    # Auditors verify with the public key only.
    "VERIFY_KEY_FILE": env_str("AUDIT_VERIFY_KEY_FILE"),
    # Results larger than this are stored cut, with their full size and SHA-256.
    "MAX_RESULT_BYTES": env_int("AUDIT_MAX_RESULT_BYTES", 64 * 1024, minimum=256),
    # Calls without an outcome this long after their request are closed as "unknown".
    "RECONCILE_AFTER_SECONDS": env_int("AUDIT_RECONCILE_AFTER_SECONDS", 900, minimum=1),
    # Seconds between runs that ship new records to the SIEM sinks (manage.py audit_sink).
    "SIEM_INTERVAL": env_int("AUDIT_SIEM_INTERVAL", 5, minimum=1),
}

MASKING = {
    # Key for hash-token replacements; without it one is derived from SECRET_KEY.
    "HASH_KEY": env_secret("MASKING_HASH_KEY"),
}

# Held calls: how long an agent's request waits for a decision, how long the request
# stays decidable, and where approvers are notified.
APPROVALS = {
    # Under the 60 s default timeout of common MCP clients.
    "HOLD_SECONDS": env_float("APPROVALS_HOLD_SECONDS", 50.0, minimum=0.0),
    "EXPIRE_SECONDS": env_int("APPROVALS_EXPIRE_SECONDS", 3600, minimum=1),
    # Waiting calls also check the database this often, in case a signal was lost.
    "FALLBACK_POLL_SECONDS": env_float("APPROVALS_FALLBACK_POLL_SECONDS", 2.0, minimum=0.05),
    # Generic webhook: JSON, signed with HMAC-SHA256 in X-Approval-Signature.
    "WEBHOOK_URL": env_str("APPROVALS_WEBHOOK_URL"),
    "WEBHOOK_SECRET": env_secret("APPROVALS_WEBHOOK_SECRET"),
    # A Slack-compatible incoming webhook; its URL is a credential.
    "SLACK_WEBHOOK_URL": env_secret("APPROVALS_SLACK_WEBHOOK_URL"),
    # Addresses mailed through Django's email backend.
    "EMAIL_TO": env_list("APPROVALS_EMAIL_TO", []),
}

CELERY_BEAT_SCHEDULE = {
    "audit-checkpoint": {
        "task": "audit.tasks.checkpoint",
        "schedule": AUDIT["CHECKPOINT_MINUTES"] * 60.0,
    },
    "audit-reconcile": {"task": "audit.tasks.reconcile", "schedule": 300.0},
    "approvals-sweep": {"task": "approvals.tasks.sweep", "schedule": 30.0},
    "audit-siem": {
        "task": "audit.tasks.forward_to_sinks",
        "schedule": float(AUDIT["SIEM_INTERVAL"]),
        # Runs missed while no worker was up are not worth doing late: the next one is.
        "options": {"expires": float(AUDIT["SIEM_INTERVAL"])},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}
