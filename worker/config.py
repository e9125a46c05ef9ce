"""Where the job system keeps its state, read from the environment once per call.

- `BPNET_STUDIO_HOME`: data dir (default `./studio-data`): SQLite job store, embedded broker,
  artifacts.
- `DATABASE_URL`: SQLAlchemy URL of the job store (default SQLite under the data dir); Postgres in
  docker-compose.
- `REDIS_URL`: Celery broker and result backend; without it an embedded SQLite broker
  (kombu's SQLAlchemy transport, polled every 0.2 s) and Celery's database result backend under the data dir are used,
  so a single machine needs no server.
- `BPNET_STUDIO_ARTIFACTS`: artifact root (default `<home>/artifacts`; a shared volume when
  workers run on several machines).
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path


# kombu's SQLAlchemy transport with a shorter polling interval (worker.celery_app.EmbeddedTransport)
EMBEDDED_TRANSPORT = "studiosqla"


@dataclass(frozen=True)
class Config:
    home: Path
    database_url: str
    broker_url: str
    result_backend: str
    artifact_root: Path
    redis_url: str | None = None

    @property
    def embedded_broker(self):
        return self.redis_url is None


def load_config(env=None):
    """The configuration from `env` (default `os.environ`), with the embedded defaults filled in."""
    env = os.environ if env is None else env
    home = Path(env.get("BPNET_STUDIO_HOME") or "studio-data").expanduser().resolve()
    redis_url = env.get("REDIS_URL") or None
    database_url = normalize_database_url(env.get("DATABASE_URL") or f"sqlite:///{home / 'studio.sqlite'}")
    if redis_url:
        broker_url = result_backend = redis_url
    else:
        broker_url = f"{EMBEDDED_TRANSPORT}+sqlite:///{home / 'broker.sqlite'}"
        result_backend = f"db+sqlite:///{home / 'results.sqlite'}"
    artifact_root = Path(env.get("BPNET_STUDIO_ARTIFACTS") or home / "artifacts").expanduser().resolve()
    return Config(home=home, database_url=database_url, broker_url=broker_url,
                  result_backend=result_backend, artifact_root=artifact_root, redis_url=redis_url)


def config_env(config):
    """Environment variables that make a child process (worker, dashboard) use `config`."""
    env = {"BPNET_STUDIO_HOME": str(config.home), "DATABASE_URL": config.database_url,
           "BPNET_STUDIO_ARTIFACTS": str(config.artifact_root)}
    if config.redis_url:
        env["REDIS_URL"] = config.redis_url
    return env


# The form users write (and Heroku-style `postgres://`) -> the driver this project installs
# (psycopg2-binary). SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which is not installed.
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
POSTGRES_DRIVER_SCHEME = "postgresql+psycopg2://"


def normalize_database_url(url):
    for scheme in _POSTGRES_SCHEMES:
        if url.startswith(scheme):
            return POSTGRES_DRIVER_SCHEME + url[len(scheme):]
    return url


_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/@:]*:)(?P<password>[^/@]+)@")


def mask_url(url):
    """`url` with its password replaced by *** (for printing and showing; never log a secret)."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***@", str(url)) if url else url


def mask_secrets(text, urls=()):
    """Any text (an error message) with every URL password masked, and the passwords of `urls`
    (e.g. the configured database and broker URLs) wherever else they appear."""
    text = mask_url(str(text))
    for url in urls:
        password = _password_of(url)
        if password and len(password) >= 4:   # a 1-3 letter one would mangle the text
            text = text.replace(password, "***")
    return text


def _password_of(url):
    match = _PASSWORD.search(url or "")
    return match["password"] if match else None
