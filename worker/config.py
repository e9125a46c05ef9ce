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
    database_url = env.get("DATABASE_URL") or f"sqlite:///{home / 'studio.sqlite'}"
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
