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
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "gateway",
    "masking",
    "console",
    "approvals",
    "audit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
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
                "console.context_processors.roles",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            # Under ASGI each console request runs in a thread of its own, and a
            # connection kept past the request outlives its thread until the collector
            # finds it: connections piled up past max_connections in a burst. Django
            # advises against persistent connections under ASGI.
            conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
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
# Under ASGI, Django runs each console, API or /healthz request's synchronous code in a
# thread of its own, with a database connection of its own. A burst of such requests
# would open connections past the database's limit (Postgres: "too many clients", a 500);
# beyond this many at once in one process, requests wait their turn instead.
CONSOLE_MAX_CONCURRENT_REQUESTS = env_int("CONSOLE_MAX_CONCURRENT_REQUESTS", 16, minimum=1)

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py reads time out after 5 s by default, exactly as long as
                # channels_redis blocks waiting for a message: every quiet receive()
                # would fail. Give the layer's client a longer read timeout.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "prefix": env_str("CHANNEL_PREFIX", "mcpgw"),
            },
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

# The cache holds counters (failed logins); shared through Redis when there is one.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "mcpgw-cache",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

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

# Served over TLS (SECURE_COOKIES=true): plain HTTP is redirected, and HSTS is sent once
# SECURE_HSTS_SECONDS is set. Behind a proxy that terminates TLS either serve with
# --proxy-headers (as docker-compose does) or name the proxy's header here.
_proxy_ssl_header = env_str("SECURE_PROXY_SSL_HEADER")  # e.g. X-Forwarded-Proto
if _proxy_ssl_header:
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", SESSION_COOKIE_SECURE)
# The container health check asks the process itself over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
# Console sessions end after this many seconds, so that roles taken away in the IdP
# take effect at the latest then.
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 12 * 3600, minimum=60)

# People log in with the organisation's OpenID Connect provider when one is configured:
# OIDC_DISCOVERY_URL (the issuer URL, or its /.well-known/openid-configuration), or
# OIDC_ISSUER with the four endpoints. Agents may then also present JWT access tokens
# from the same provider (gateway/jwt.py).
OIDC_DISCOVERY_URL = env_str("OIDC_DISCOVERY_URL")
OIDC_ISSUER = env_str("OIDC_ISSUER")
OIDC_OP_AUTHORIZATION_ENDPOINT = env_str("OIDC_OP_AUTHORIZATION_ENDPOINT")
OIDC_OP_TOKEN_ENDPOINT = env_str("OIDC_OP_TOKEN_ENDPOINT")
OIDC_OP_USER_ENDPOINT = env_str("OIDC_OP_USER_ENDPOINT")
OIDC_OP_JWKS_ENDPOINT = env_str("OIDC_OP_JWKS_ENDPOINT")
OIDC_OP_END_SESSION_ENDPOINT = env_str("OIDC_OP_END_SESSION_ENDPOINT")
_oidc_endpoints = [
    OIDC_OP_AUTHORIZATION_ENDPOINT,
    OIDC_OP_TOKEN_ENDPOINT,
    OIDC_OP_USER_ENDPOINT,
    OIDC_OP_JWKS_ENDPOINT,
]
if OIDC_DISCOVERY_URL and any(_oidc_endpoints):
    raise ImproperlyConfigured("set OIDC_DISCOVERY_URL or the OIDC_OP_*_ENDPOINT, not both")
if any(_oidc_endpoints) and not (all(_oidc_endpoints) and OIDC_ISSUER):
    raise ImproperlyConfigured(
        "without OIDC_DISCOVERY_URL set OIDC_ISSUER and all of OIDC_OP_AUTHORIZATION_ENDPOINT,"
        " OIDC_OP_TOKEN_ENDPOINT, OIDC_OP_USER_ENDPOINT and OIDC_OP_JWKS_ENDPOINT"
    )
OIDC_ENABLED = bool(OIDC_DISCOVERY_URL or all(_oidc_endpoints))
OIDC_RP_CLIENT_ID = env_str("OIDC_RP_CLIENT_ID")
OIDC_RP_CLIENT_SECRET = env_secret("OIDC_RP_CLIENT_SECRET")
if OIDC_ENABLED and not OIDC_RP_CLIENT_ID:
    raise ImproperlyConfigured("OpenID Connect is configured: set OIDC_RP_CLIENT_ID too")
OIDC_RP_SCOPES = env_str("OIDC_RP_SCOPES", "openid email profile groups")
OIDC_PROVIDER_NAME = env_str("OIDC_PROVIDER_NAME", "single sign-on")
# Every HTTP call to the provider gives up after this many seconds.
OIDC_TIMEOUT = env_float("OIDC_TIMEOUT", 5.0, minimum=0.1)
OIDC_USE_PKCE = env_bool("OIDC_USE_PKCE", True)
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups")
# Agent access tokens: the claim naming one run of an agent, and the gateway's base
# resource URI, accepted as audience for every connection besides the connection's own.
OIDC_RUN_CLAIM = env_str("OIDC_RUN_CLAIM", "run")
OIDC_AUDIENCE = env_str("OIDC_AUDIENCE", PUBLIC_URL)


def _role_map(raw: str) -> dict[str, tuple[str, ...]]:
    """OIDC_ROLE_MAP, "admin=gw-admins,approver=gw-approvers": IdP group -> role. A role
    may be named more than once; a group name may hold commas (an LDAP DN)."""
    import re

    mapping: dict[str, list[str]] = {}
    roles = ("admin", "approver", "auditor", "viewer")
    for item in re.split(r",(?=\s*(?:admin|approver|auditor|viewer)\s*=)", raw):
        if not item.strip():
            continue
        role, sep, group = (part.strip() for part in item.partition("="))
        if not sep or not group or role not in roles:
            raise ImproperlyConfigured(
                f"OIDC_ROLE_MAP: {item.strip()!r} is not role=group with role one of {roles}"
            )
        mapping.setdefault(role, []).append(group)
    return {role: tuple(groups) for role, groups in mapping.items()}


OIDC_ROLE_MAP = _role_map(env_str("OIDC_ROLE_MAP"))
if OIDC_ENABLED and not OIDC_ROLE_MAP:
    raise ImproperlyConfigured(
        "OpenID Connect is configured: set OIDC_ROLE_MAP, e.g. admin=gw-admins,viewer=gw-viewers"
    )
# The ID token is kept in the session for the provider's logout (id_token_hint).
OIDC_STORE_ID_TOKEN = True
OIDC_AUTHENTICATION_CALLBACK_URL = "oidc_authentication_callback"

# Password login: the embedded default and break-glass. It may be switched off when
# OpenID Connect is configured; failed attempts are limited per username and per client
# address within a window (through the cache).
PASSWORD_LOGIN = env_bool("PASSWORD_LOGIN", True)
if not PASSWORD_LOGIN and not OIDC_ENABLED:
    raise ImproperlyConfigured("PASSWORD_LOGIN=false needs OpenID Connect configured")
LOGIN_THROTTLE = {
    "PER_USERNAME": env_int("LOGIN_FAILURES_PER_USERNAME", 5, minimum=1),
    # Higher: many people may share one address behind a NAT or proxy.
    "PER_ADDRESS": env_int("LOGIN_FAILURES_PER_ADDRESS", 20, minimum=1),
    "WINDOW_SECONDS": env_int("LOGIN_FAILURE_WINDOW_SECONDS", 15 * 60, minimum=1),
}
AUTHENTICATION_BACKENDS = [
    *(["django.contrib.auth.backends.ModelBackend"] if PASSWORD_LOGIN else []),
    "console.oidc.OIDCBackend",
]


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


# Content Security Policy: everything from this origin only, no inline scripts or styles,
# never framed. Forms may also lead to the IdP (logout redirects to its end_session).
SECURE_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": [
        "'self'",
        *sorted(
            {
                origin
                for url in (OIDC_DISCOVERY_URL, OIDC_ISSUER, OIDC_OP_END_SESSION_ENDPOINT)
                if (origin := _origin(url))
            }
        ),
    ],
    "frame-ancestors": ["'none'"],
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "console.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "MCP Gateway API",
    "DESCRIPTION": "What the console does, for scripts: connections, tokens, masking rules, "
    "policies, approvals and the audit trail.",
    "VERSION": "1",
    # The schema and docs are for people with a console role (or an api token of one).
    "SERVE_PERMISSIONS": ["console.api.HasConsoleRole"],
    # Swagger UI from our own static files: no CDN, and scripts from 'self' only.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# Email (approval notifications). Without EMAIL_HOST mail is written to the log.
_smtp_host = env_str("EMAIL_HOST")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "mcp-gateway@localhost")
MAILERS = {
    "default": (
        {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {
                "host": _smtp_host,
                "port": env_int("EMAIL_PORT", 587, minimum=1),
                "username": env_str("EMAIL_HOST_USER"),
                "password": env_secret("EMAIL_HOST_PASSWORD"),
                "use_tls": env_bool("EMAIL_USE_TLS", True),
                "timeout": 10,
            },
        }
        if _smtp_host
        else {"BACKEND": "django.core.mail.backends.console.EmailBackend"}
    )
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
    # stdio upstreams: a server process without calls for this long is stopped.
    "STDIO_IDLE_SECONDS": env_int("GATEWAY_STDIO_IDLE_SECONDS", 300, minimum=1),
    # ... and a new one may take this long to answer initialize.
    "STDIO_START_TIMEOUT": env_float("GATEWAY_STDIO_START_TIMEOUT", 30.0, minimum=1.0),
    # Seconds to keep an upstream's detected protocol era before probing again.
    "ERA_CACHE_SECONDS": env_int("GATEWAY_ERA_CACHE_SECONDS", 3600, minimum=0),
    # Requests open at once from one process to one HTTP upstream (agents' GET streams
    # not counted); a call that finds none free within UPSTREAM_TIMEOUT gets an error.
    "UPSTREAM_MAX_CONNECTIONS": env_int("GATEWAY_UPSTREAM_MAX_CONNECTIONS", 200, minimum=1),
    # Tokens, connections, grants, policy and sessions read to admit a call are kept in
    # memory (see gateway/admission.py). On Postgres a change drops them at once on every
    # process; on SQLite they are read again after this many seconds. 0 keeps nothing.
    "ADMISSION_CACHE_SECONDS": env_float("GATEWAY_ADMISSION_CACHE_SECONDS", 2.0, minimum=0.0),
    # On Postgres, kept values are read again after this many seconds in any case.
    "ADMISSION_CACHE_MAX_AGE": env_float("GATEWAY_ADMISSION_CACHE_MAX_AGE", 60.0, minimum=0.0),
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
        # Every periodic task's success is not news.
        "celery.app.trace": {"level": "WARNING"},
    },
}
